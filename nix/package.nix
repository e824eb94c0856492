# builderd and builderctl from this source tree, with shell completions.
{ lib, stdenv, rustPlatform, installShellFiles }:

let
  manifest = builtins.fromTOML (builtins.readFile ../Cargo.toml);
in
rustPlatform.buildRustPackage {
  pname = "builderd";
  inherit (manifest.workspace.package) version;
  src = lib.cleanSourceWith {
    src = ../.;
    filter = path: type: !(builtins.elem (baseNameOf path) [ "target" "result" ".git" ]);
  };
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "--package" "builderd" "--package" "builderctl" ];
  # The tests drive a real Docker engine, sshd and nix (tests/run); none is in the build sandbox.
  doCheck = false;
  nativeBuildInputs = [ installShellFiles ];
  postInstall = lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    installShellCompletion --cmd builderctl \
      --bash <($out/bin/builderctl completions bash) \
      --zsh <($out/bin/builderctl completions zsh) \
      --fish <($out/bin/builderctl completions fish)
  '';
  meta = {
    description = "Linux Nix remote builder in Docker for macOS, kept registered and healthy";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "builderctl";
    platforms = lib.platforms.darwin ++ lib.platforms.linux;
  };
}
