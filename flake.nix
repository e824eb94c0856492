{
  description = "builderd: a Linux Nix remote builder in Docker for macOS, kept registered and healthy";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixpkgs-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "aarch64-darwin" "x86_64-darwin" "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (system: pkgs: rec {
        builderd = pkgs.callPackage ./nix/package.nix { };
        default = builderd;
      });

      apps = forAll (system: pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${system}.default}/bin/builderctl";
        };
      });

      overlays.default = final: prev: {
        builderd = final.callPackage ./nix/package.nix { };
      };

      # services.builderd: the root launchd daemon serving one user (see nix/darwin-module.nix).
      darwinModules.default = import ./nix/darwin-module.nix self;
      darwinModules.builderd = self.darwinModules.default;
    };
}
