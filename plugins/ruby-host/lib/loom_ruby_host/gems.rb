# frozen_string_literal: true

# Which Ruby libraries a plugin needs, found by reading its files (never by running them),
# and what to install when one is missing.
module LoomHost
  module Gems
    # Library (the start of a `require` path) => [gem, Debian package or nil].
    KNOWN = {
      'net/ssh' => ['net-ssh', 'ruby-net-ssh'],
      'net/scp' => ['net-scp', 'ruby-net-scp'],
      'deep_merge' => ['deep_merge', 'ruby-deep-merge'],
      'ed25519' => ['ed25519', 'ruby-ed25519'],
      'bcrypt_pbkdf' => ['bcrypt_pbkdf', 'ruby-bcrypt-pbkdf'],
      'fog/aws' => ['fog-aws', 'ruby-fog-aws'],
      'fog/google' => ['fog-google', 'ruby-fog-google'],
      'fog/openstack' => ['fog-openstack', 'ruby-fog-openstack'],
      'fog/rackspace' => ['fog-rackspace', 'ruby-fog-rackspace'],
      'fog/joyent' => ['fog-joyent', nil],
      'fog/digitalocean' => ['fog-digitalocean', nil],
      'fog/core' => ['fog-core', 'ruby-fog-core'],
      'fog' => ['fog', nil],
      'rest_client' => ['rest-client', 'ruby-rest-client'],
      'rest-client' => ['rest-client', 'ruby-rest-client'],
      'chef' => ['chef', nil],
      'docker' => ['docker-api', 'ruby-docker-api']
    }.freeze

    # What the bases of Loom and Coopr loaded for their plugins, and how a plugin shows
    # it relies on that: code naming these, with no `require` of its own.
    IMPLIED = {
      /\bNet::SSH\b|\bssh_exec!/ => 'net/ssh',
      /\bNet::SCP\b/ => 'net/scp',
      /\bdeeper_merge!?|\bko_deep_merge!|\bdeep_merge!/ => 'deep_merge/rails_compat',
      /\bCoopr::Plugin::/ => %w[net/ssh net/scp deep_merge/rails_compat]
    }.freeze

    MAX_FILES = 500
    MAX_BYTES = 4 << 20

    # "the Ruby library fog/joyent (gem fog-joyent) is not installed: ..." with what to do.
    def self.describe(lib)
      gem = gem_of(lib)
      return "the Ruby library #{lib} is not installed" unless gem

      package = KNOWN.values.find { |g, _| g == gem }&.last

      fix = package ? "apt-get install #{package}, or gem install #{gem}" : "gem install #{gem} (no Debian package provides it)"
      "the Ruby library #{lib} (gem #{gem}) is not installed: #{fix}"
    end

    # "the gem knife-joyent is not installed: ..." with what to do.
    def self.describe_gem(gem)
      package = KNOWN.values.find { |g, _| g == gem }&.last
      fix = package ? "apt-get install #{package}, or gem install #{gem}" : "gem install #{gem} (no Debian package provides it)"
      "the gem #{gem} is not installed: #{fix}"
    end

    def self.gem_installed?(gem)
      Gem::Specification.find_all_by_name(gem).any?
    end

    def self.installed?(lib)
      found = begin
        $LOAD_PATH.resolve_feature_path(lib)
      rescue LoadError
        nil
      end
      !found.nil? || Gem.find_files(lib).any?
    end

    # The libraries that the plugin in `dir` needs and that are not installed, each with
    # what to install. Reads the *.rb files the host would load and those they
    # require_relative; counts only `require` and `gem` lines at the start of a line (a
    # require inside a method or a `begin ... rescue LoadError` is the plugin's own
    # business).
    def self.missing(dir)
      gems, libs = needed(dir)
      missing_gems = gems.reject { |gem| gem_installed?(gem) }
      # One line per gem: a plugin requiring five files of a missing gem needs it once.
      missing_libs = libs.reject { |lib| installed?(lib) }.uniq { |lib| gem_of(lib) || lib }
      missing_libs.reject! { |lib| missing_gems.include?(gem_of(lib)) }
      missing_gems.map { |gem| describe_gem(gem) } + missing_libs.map { |lib| describe(lib) }
    end

    # The gem that provides `lib`, when known.
    def self.gem_of(lib)
      key = KNOWN.keys.select { |k| lib == k || lib.start_with?("#{k}/") }.max_by(&:length)
      KNOWN[key]&.first
    end

    # [gems activated with a top-level `gem 'name'`, libraries required], each once.
    def self.needed(dir)
      gems = []
      libs = []
      each_source(dir) do |text|
        text.scan(/^gem\s*\(?\s*['"]([^'"\s]+)['"]/) { |(gem)| gems << gem }
        text.scan(/^require\s*\(?\s*['"]([^'"\s]+)['"]/) { |(lib)| libs << lib }
        IMPLIED.each { |pattern, implied| libs.concat(Array(implied)) if text.match?(pattern) }
      end
      [gems.uniq, libs.uniq]
    end

    def self.each_source(dir)
      dir = File.expand_path(dir)
      queue = Dir[File.join(dir, '*.rb')].sort
      seen = {}
      until queue.empty? || seen.size >= MAX_FILES
        file = queue.shift
        next if seen[file] || !File.file?(file) || File.size(file) > MAX_BYTES

        seen[file] = true
        text = File.read(file, mode: 'rb').force_encoding('UTF-8').scrub
        yield text
        text.scan(/^\s*require_relative\s*\(?\s*['"]([^'"\s]+)['"]/) do |(rel)|
          path = File.expand_path(rel, File.dirname(file))
          path += '.rb' unless path.end_with?('.rb')
          queue << path if path.start_with?("#{dir}/")
        end
      end
    end
  end
end
