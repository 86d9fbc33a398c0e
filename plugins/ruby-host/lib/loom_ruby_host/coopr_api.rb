# frozen_string_literal: true

require 'base64'
require 'fileutils'

# Coopr's plugin API, under the Coopr module as Coopr's provisioner defined it:
# Coopr::Logging, Coopr::Plugin::Utils and the bases Coopr::Plugin::Provider and
# Coopr::Plugin::Automator, whose objects are made with `new(env, task)`.
module Coopr
  # Coopr's logging module: `log` writes to the supervisor's log under the task the calling
  # thread runs. Where the log goes and its level are the supervisor's: the settings are
  # accepted and do nothing.
  module Logging
    attr_accessor :level

    def log
      Coopr::Logging.log
    end

    def self.log
      ::Logging.log
    end

    %i[configure level= shift_age= shift_size= process_name=].each do |setting|
      define_singleton_method(setting) { |_value| nil }
    end
  end

  module Plugin
    # Coopr's helpers for plugins.
    module Utils
      # A remote command that failed; when it escapes a task, the task's stdout and stderr
      # are the command's.
      class CommandExecutionError < RuntimeError
        attr_reader :command, :stdout, :stderr, :exit_code, :exit_signal

        def initialize(command = nil, stdout = nil, stderr = nil, exit_code = nil, exit_signal = nil)
          super(command.to_s)
          @command = command
          @stdout = stdout
          @stderr = stderr
          @exit_code = exit_code
          @exit_signal = exit_signal
        end

        def to_json(*args)
          { 'message' => message, 'command' => command, 'stdout' => @stdout, 'stderr' => @stderr,
            'exit_code' => @exit_code, 'exit_signal' => @exit_signal }.to_json(*args)
        end
      end

      # Writes the base64 `string`, decoded, to `outfile` (made with `mode`).
      def decode_string_to_file(string, outfile, mode = 0o600)
        ::FileUtils.mkdir_p(::File.dirname(outfile))
        ::File.open(outfile, 'wb', mode) { |f| f.write(::Base64.decode64(string)) }
      end

      # Writes the provider's `ssh_keyfile` (base64) to <path>/<taskId>; its path, or nil
      # when the provider has none.
      def write_ssh_file(path, task)
        fields = ((task['config'] || {})['provider'] || {})['provisioner'] || {}
        return nil unless fields.is_a?(Hash) && fields.key?('ssh_keyfile')

        identityfile = ::File.join(path, task['taskId'])
        log.debug "Writing out SSH private key to #{identityfile}"
        decode_string_to_file(fields['ssh_keyfile'], identityfile)
        identityfile
      end

      # The base64 part of `host`'s SSH host key of `type` (on the task's SSH port).
      def ssh_keyscan(host, type = 'rsa')
        LoomHost::Ssh.keyscan(host, type)
      end

      # Runs `command` over the Net::SSH session `ssh` (`message` is what the log says);
      # returns [stdout, stderr, exit code, exit signal], or raises CommandExecutionError
      # when the command did not exit 0.
      def ssh_exec!(ssh, command, message = command, pty = false) # rubocop:disable Style/OptionalBooleanParameter -- Coopr's
        log.debug message if message != command
        log.debug "---ssh-exec command: #{command}"
        out, err, code, signal = LoomHost::Ssh.exec(ssh, command, pty: pty)
        raise CommandExecutionError.new(command, out, err, code, signal), message unless code == 0 # rubocop:disable Style/NumericPredicate

        [out, err, code, signal]
      end
    end

    # What Coopr's two bases share.
    class Base
      include Coopr::Logging
      include Coopr::Plugin::Utils
      attr_accessor :task, :flavor, :image, :hostname, :providerid, :result
      attr_reader :env

      def initialize(env, task)
        @task = task
        @env = env
        @result = LoomHost.autoviv
      end

      def runTask # rubocop:disable Naming/MethodName -- Coopr's name
        before_task
        LoomHost::Calls.run(self, @task)
      end

      def before_task; end
    end

    # Base of Coopr's provider plugins.
    class Provider < Base
      TASKS = %w[CREATE CONFIRM DELETE].freeze
    end

    # Base of Coopr's automator plugins. Before each task, the machine's host key is
    # checked against the one its provider recorded, as Coopr did.
    class Automator < Base
      TASKS = %w[BOOTSTRAP INSTALL CONFIGURE INITIALIZE START STOP REMOVE].freeze

      # Coopr verified the rsa key; a provider of ours may have recorded another type
      # only (`local` records ed25519): then that one is verified.
      def before_task
        keys = (@task['config'] || {})['ssh_host_keys']
        type = keys.is_a?(Hash) && !keys.key?('rsa') && !keys.empty? ? keys.keys.first.to_s : 'rsa'
        verify_ssh_host_key(LoomHost::Calls.new(self, @task).ipaddress, type)
      end

      # Compares `host`'s key of `type` with the task's `ssh_host_keys`; raises when they
      # differ, warns when none is recorded.
      def verify_ssh_host_key(host, type = 'rsa')
        config = @task['config'] || {}
        keys = config['ssh_host_keys'].is_a?(Hash) ? config['ssh_host_keys'] : {}
        hostname = config['hostname']
        unless host && type && keys.key?(type)
          log.warn "SSH Host key not stored for #{hostname}... Skipping verification"
          return
        end
        log.debug "Verifying SSH host key for #{hostname}/#{host}"
        recorded = keys[type].to_s.split.find { |part| part.start_with?('AAAA') } || keys[type].to_s.strip
        raise "SSH host key verification failed for #{hostname}/#{host}" unless recorded == ssh_keyscan(host, type)
      end
    end
  end
end
