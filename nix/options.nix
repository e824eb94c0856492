# builderd's config file (config.toml), key by key, as plain data: the nix-darwin module turns
# it into options, and tests/tests/packaging.rs compares it with the defaults in
# daemon/src/config.rs, so the two cannot drift apart. `default = null` leaves the key out of
# the generated file: builderd then uses its own default (for the paths, the user's home's).
{
  port = { type = "port"; default = 2222; description = "Host port on 127.0.0.1 the builder's sshd is published on."; };
  public_key = { type = "str"; default = null; description = "The user's SSH public key (~/.ssh/id_ed25519.pub)."; };
  private_key = { type = "str"; default = null; description = "Its private half (~/.ssh/id_ed25519)."; };
  state_dir = { type = "str"; default = null; description = "Volume, state and logs (~/Library/Application Support/builderd)."; };
  socket = { type = "str"; default = null; description = "The daemon's Unix socket (in state_dir)."; };
  container_name = { type = "str"; default = "nix-builder"; description = "The container's name; also names builderd's blocks in shared files."; };
  docker_host = { type = "str"; default = null; description = "The engine; else DOCKER_HOST, the docker context, Docker Desktop's socket."; };
  health_interval = { type = "int"; default = 30; description = "Seconds between health checks."; };
  health_failures_before_restart = { type = "int"; default = 3; description = "Failed checks in a row that restart the container."; };
  on_demand = { type = "bool"; default = false; description = "Stop the builder when idle, wake it on a connection."; };
  idle_stop = { type = "int"; default = 600; description = "Seconds without a connection before an on-demand builder sleeps."; };
  image = {
    context = { type = "str"; default = null; description = "A build context of your own (the embedded one otherwise)."; };
    repository = { type = "str"; default = "nix-builder"; description = "The image's repository name."; };
    base_image = { type = "str"; default = "debian:trixie-slim"; description = "The base image, pulled."; };
    platform = { type = "str"; default = null; description = "The builder's platform (the host's own when unset)."; };
    debian_mirror = { type = "str"; default = "http://deb.debian.org/debian"; description = "Debian mirror (Linux: debootstrap)."; };
    debian_suite = { type = "str"; default = "trixie"; description = "Debian suite of a base made with debootstrap."; };
  };
  builder = {
    privileged = { type = "bool"; default = false; description = "--privileged, only for an engine that needs it."; };
    sandbox = { type = "bool"; default = true; description = "Nix's sandbox in the builder."; };
    substituters = { type = "str"; default = "https://cache.nixos.org/"; description = "The builder's substituters."; };
    trusted_public_keys = { type = "str"; default = null; description = "The builder's trusted-public-keys."; };
    min_free = { type = "int"; default = 1073741824; description = "Collect garbage below this many free bytes."; };
    max_free = { type = "int"; default = 4294967296; description = "… until this many are free."; };
    max_jobs = { type = "int"; default = null; description = "Machines line and the builder's max-jobs (from the engine's CPUs and memory when unset)."; };
    cores = { type = "int"; default = null; description = "The builder's cores per job (from the engine's CPUs when unset)."; };
    speed_factor = { type = "int"; default = 1; description = "Machines line: speed factor."; };
    supported_features = { type = "listOfStr"; default = [ "benchmark" "big-parallel" ]; description = "Machines line: features."; };
    systems = { type = "listOfStr"; default = null; description = "Only these of the systems the builder runs."; };
  };
  registration = {
    machines_file = { type = "str"; default = "/etc/nix/machines"; description = "The machines file builderd keeps its line in."; };
    nix_conf = { type = "str"; default = "/etc/nix/nix.conf"; description = "nix.conf (a nix-darwin link is never written through)."; };
    known_hosts = { type = "listOfStr"; default = null; description = "known_hosts files: the user's and root's."; };
    ssh_config = { type = "listOfStr"; default = null; description = "ssh_config files, paired with known_hosts."; };
    alias = { type = "str"; default = null; description = "The ssh_config Host alias (the container name when unset)."; };
    uri = { type = "enum:auto,alias,host-port"; default = "auto"; description = "How the machines line names the builder."; };
    restart_nix_daemon = { type = "bool"; default = true; description = "Restart the nix-daemon after nix.conf changed."; };
    unlist_unhealthy = { type = "bool"; default = true; description = "Take an unhealthy builder's line out of the machines file."; };
    unlist_unhealthy_after = { type = "int"; default = 120; description = "… after this many seconds."; };
  };
  remote = { type = "remotes"; default = [ ]; description = "[[remote]] tables: remote builders (see the README's Fleet)."; };
}
