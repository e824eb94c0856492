# nix-darwin module: `services.builderd.enable = true;` runs builderd as the root launchd daemon
# serving one user, as `sudo builderctl install` would install it (same label, program
# arguments, environment, logs), with the config written from Nix options.
#
# The machines file is left to builderd: it keeps its own line in /etc/nix/machines true (the
# systems the builder runs, its host key in field 8, taken out while unhealthy). nix-darwin owns
# /etc/nix/nix.conf (a link into the store, which builderd never writes through), so this module
# sets what builderd would have put there: `builders-use-substitutes`, `build-poll-interval`
# (1 s: a build postponed while the builder's slots are busy starts within a second of one
# freeing, not Nix's 5 s; a default, yours to override), and `nix.distributedBuilds`, without
# which nix-darwin writes an empty `builders =` and Nix ignores /etc/nix/machines. Keep
# `nix.buildMachines` empty: nix-darwin would then own /etc/nix/machines too (builderd would
# only report the lines to add).
self:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.builderd;
  toml = pkgs.formats.toml { };
  spec = import ./options.nix;
  isLeaf = v: v ? type && v ? default && v ? description;
  typeOf = t:
    if t == "port" then lib.types.port
    else if t == "int" then lib.types.ints.unsigned
    else if t == "bool" then lib.types.bool
    else if t == "str" then lib.types.str
    else if t == "listOfStr" then lib.types.listOf lib.types.str
    else if t == "remotes" then lib.types.listOf (lib.types.attrsOf toml.type)
    else if lib.hasPrefix "enum:" t then lib.types.enum (lib.splitString "," (lib.removePrefix "enum:" t))
    else throw "options.nix: unknown type ${t}";
  toOptions = lib.mapAttrs (name: v:
    if isLeaf v then
      lib.mkOption {
        type = if v.default == null then lib.types.nullOr (typeOf v.type) else typeOf v.type;
        inherit (v) default description;
      }
    else toOptions v);
  # Keys left null are left out: builderd's own default applies.
  prune = lib.mapAttrs (n: v: if builtins.isAttrs v then prune (lib.filterAttrs (k: x: x != null) v) else v);
  settings = prune (lib.filterAttrs (k: x: x != null) cfg.settings);
  configFile = toml.generate "builderd-config.toml" settings;
  # What `sudo builderctl install` uses (daemon/src/config.rs: system_dir, ROOT_PATH).
  systemDir = "/Library/Application Support/org.builderd";
  rootPath = "/usr/bin:/bin:/usr/sbin:/sbin:/nix/var/nix/profiles/default/bin";
in
{
  options.services.builderd = {
    enable = lib.mkEnableOption "builderd, a Linux Nix remote builder in Docker, as a root launchd daemon serving one user";
    package = lib.mkOption {
      type = lib.types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      defaultText = lib.literalExpression "builderd.packages.\${system}.default";
      description = "The builderd package.";
    };
    user = lib.mkOption {
      type = lib.types.str;
      example = "alice";
      description = "The user whose builder it is: their SSH key, their Docker engine, their ~/.ssh files.";
    };
    uid = lib.mkOption {
      type = lib.types.int;
      example = 501;
      description = "That user's uid (`id -u`): the daemon serves only them.";
    };
    home = lib.mkOption {
      type = lib.types.str;
      default = "/Users/${cfg.user}";
      defaultText = lib.literalExpression ''"/Users/''${config.services.builderd.user}"'';
      description = "That user's home.";
    };
    dockerHost = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "unix:///Users/alice/.colima/default/docker.sock";
      description = "DOCKER_HOST for the daemon; unset: the user's docker context, then Docker Desktop's socket.";
    };
    settings = toOptions spec;
  };

  config = lib.mkIf cfg.enable {
    environment.systemPackages = [ cfg.package ];

    nix.distributedBuilds = lib.mkDefault true;
    nix.settings.builders-use-substitutes = true;
    nix.settings.build-poll-interval = lib.mkDefault 1;

    assertions = [
      {
        assertion = config.nix.buildMachines == [ ];
        message = "services.builderd keeps /etc/nix/machines itself; leave nix.buildMachines empty (add remote builders as services.builderd.settings.remote).";
      }
    ];

    system.activationScripts.extraActivation.text = lib.mkAfter ''
      mkdir -p -m 0755 '${systemDir}/logs'
    '';

    launchd.daemons.builderd.serviceConfig = {
      Label = "org.builderd.builderd";
      ProgramArguments = [ "${cfg.package}/bin/builderd" "--config" "${configFile}" ];
      RunAtLoad = true;
      KeepAlive = true;
      ProcessType = "Background";
      ThrottleInterval = 10;
      StandardOutPath = "${systemDir}/logs/builderd.out.log";
      StandardErrorPath = "${systemDir}/logs/builderd.err.log";
      EnvironmentVariables = {
        PATH = rootPath;
        HOME = cfg.home;
        BUILDERD_OWNER_UID = toString cfg.uid;
      } // lib.optionalAttrs (cfg.dockerHost != null) { DOCKER_HOST = cfg.dockerHost; };
    };
  };
}
