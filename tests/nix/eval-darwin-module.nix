# Evaluates nix/darwin-module.nix for real, with a small stand-in for nixpkgs' `lib` (no nixpkgs
# can be fetched where the tests run): the options it declares, with their defaults, and the
# launchd daemon and Nix settings it makes for one user. Read by tests/tests/packaging.rs.
let
  lib = rec {
    mkOption = o: { _option = true; default = o.default or null; };
    mkEnableOption = _: mkOption { default = false; };
    literalExpression = x: x;
    mkIf = c: v: if c then v else { };
    mkDefault = v: v;
    mkAfter = v: v;
    optionalAttrs = c: v: if c then v else { };
    inherit (builtins) mapAttrs;
    filterAttrs = f: s: builtins.listToAttrs (builtins.filter (a: f a.name a.value)
      (map (n: { name = n; value = s.${n}; }) (builtins.attrNames s)));
    hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
    removePrefix = p: s: builtins.substring (builtins.stringLength p) (-1) s;
    splitString = sep: s: builtins.filter builtins.isString (builtins.split sep s);
    types = {
      port = "port"; bool = "bool"; str = "str"; package = "package"; int = "int";
      ints.unsigned = "unsigned";
      listOf = t: "listOf";
      attrsOf = t: "attrsOf";
      nullOr = t: "nullOr";
      enum = l: "enum";
    };
  };
  self.packages.aarch64-darwin.default = "/nix/store/00000000000000000000000000000000-builderd";
  pkgs = {
    stdenv.hostPlatform.system = "aarch64-darwin";
    formats.toml = _: {
      type = "toml";
      # The file's name, then what it would hold (as JSON), so that the test can read both.
      generate = name: value: "/nix/store/11111111111111111111111111111111-${name}#${builtins.toJSON value}";
    };
  };
  module = import ../../nix/darwin-module.nix self;
  # The option tree, each leaf its default.
  defaults = t: if t ? _option then t.default else builtins.mapAttrs (n: defaults) t;
  declared = (module { config = { }; inherit lib pkgs; }).options.services.builderd;
  user = {
    enable = true;
    user = "alice";
    uid = 501;
    home = "/Users/alice";
    dockerHost = null;
    package = self.packages.aarch64-darwin.default;
    settings = defaults declared.settings // { port = 2300; };
  };
  made = (module { config = { services.builderd = user; nix.buildMachines = [ ]; }; inherit lib pkgs; }).config;
in
{
  settings = defaults declared.settings;
  service = made.launchd.daemons.builderd.serviceConfig;
  inherit (made) nix assertions;
}
