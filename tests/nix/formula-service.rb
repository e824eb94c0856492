# Loads a Homebrew formula with a small stand-in for Homebrew's DSL and prints its service block
# as JSON: the command line, environment and logs `brew services` would give launchd. Read by
# tests/tests/packaging.rs.
require "json"
require "pathname"

class Formula
  def self.method_missing(*_args, **_kwargs, &_block); end

  def self.respond_to_missing?(*)
    true
  end

  # Kernel#test would take `test do … end` otherwise.
  def self.test(*); end

  def self.service(&block)
    @service_block = block
  end

  class << self
    attr_reader :service_block
  end
end

class Service
  attr_reader :fields

  def initialize
    @fields = {}
  end

  def opt_bin
    Pathname.new("/opt/homebrew/opt/builderd/bin")
  end

  def std_service_path_env
    "/opt/homebrew/bin:/opt/homebrew/sbin:/usr/bin:/bin:/usr/sbin:/sbin"
  end

  %w[run keep_alive run_at_load process_type log_path error_log_path working_dir].each do |m|
    define_method(m) { |v| @fields[m] = v }
  end

  def environment_variables(vars)
    @fields["environment_variables"] = vars
  end
end

load ARGV.fetch(0)
formula = Object.const_get(File.basename(ARGV[0], ".rb").capitalize)
service = Service.new
service.instance_eval(&formula.service_block)
plain = lambda do |v|
  case v
  when Array then v.map(&plain)
  when Hash then v.to_h { |k, x| [k.to_s, plain.call(x)] }
  when true, false then v
  else v.to_s
  end
end
puts JSON.generate(plain.call(service.fields))
