# Homebrew formula for builderd. `scripts/release VERSION` fills in @VERSION@, @URL@ and
# @SHA256@ (target/release-artifacts/VERSION/homebrew/builderd.rb); put that copy in a tap.
#
#   brew install builderd/tap/builderd
#   brew services start builderd      # the daemon as you, at login (what `builderctl install --user` does)
#   sudo builderctl install           # or: as root at boot, serving you (root's known_hosts too)
class Builderd < Formula
  desc "Linux Nix remote builder in Docker for macOS, kept registered and healthy"
  homepage "https://github.com/builderd/builderd"
  url "@URL@"
  version "@VERSION@"
  sha256 "@SHA256@"
  license any_of: ["MIT", "Apache-2.0"]

  # One universal (arm64 + x86_64) binary per program.
  depends_on :macos

  def install
    bin.install "bin/builderd", "bin/builderctl"
    bash_completion.install "completions/builderctl.bash" => "builderctl"
    zsh_completion.install "completions/_builderctl"
    fish_completion.install "completions/builderctl.fish"
    doc.install "README.md"
  end

  # The user agent, as `builderctl install --user` writes it: the same program, config and logs.
  service do
    run [opt_bin/"builderd", "--config", "#{Dir.home}/Library/Application Support/builderd/config.toml"]
    environment_variables PATH: std_service_path_env, HOME: Dir.home
    keep_alive true
    run_at_load true
    process_type :background
    log_path "#{Dir.home}/Library/Application Support/builderd/logs/builderd.out.log"
    error_log_path "#{Dir.home}/Library/Application Support/builderd/logs/builderd.err.log"
  end

  def caveats
    <<~EOS
      builderd needs a Docker engine (Docker Desktop, Colima or OrbStack).
      Try it once:              builderctl up --wait
      Keep it up, as you:       brew services start builderd
      Or as root at boot (serving you, with root's ssh files kept too):
                                sudo #{opt_bin}/builderctl install
      Then check everything:    builderctl doctor
    EOS
  end

  test do
    assert_match version.to_s, shell_output("#{bin}/builderctl --version")
    assert_match "builderctl", shell_output("#{bin}/builderctl completions zsh")
  end
end
