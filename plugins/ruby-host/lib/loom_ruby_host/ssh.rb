# frozen_string_literal: true

require 'open3'

module LoomHost
  # What Loom's and Coopr's SSH helpers did, once, for both APIs: run a command over an
  # open Net::SSH session, and read a host's key with ssh-keyscan. Plus the task's target
  # (address, port, pinned host keys), which Net::SSH.start is given for the plugin
  # (SshTarget).
  module Ssh
    # [stdout, stderr, exit code, exit signal] of `command` run over `ssh`.
    def self.exec(ssh, command, pty: false)
      out = +''
      err = +''
      code = nil
      signal = nil
      ssh.open_channel do |channel|
        if pty
          channel.request_pty { |_ch, ok| raise 'could not get a pseudo-terminal for the command' unless ok }
        end
        channel.exec(command) do |_ch, ok|
          raise "the SSH server refused to run the command (channel exec)" unless ok

          channel.on_data { |_c, data| out << data }
          channel.on_extended_data { |_c, _type, data| err << data }
          channel.on_request('exit-status') { |_c, data| code = data.read_long }
          channel.on_request('exit-signal') { |_c, data| signal = data.read_string }
        end
      end
      ssh.loop
      [out, err, code, signal]
    end

    # The base64 part of `host`'s public key of `type` (rsa, dsa, ecdsa, ed25519), read
    # with ssh-keyscan, on the task's SSH port when `host` is its machine.
    def self.keyscan(host, type = 'rsa')
      port = Target.current&.port_for(host)
      args = ['ssh-keyscan', '-T', '10', '-t', type]
      args += ['-p', port.to_s] if port
      out, = Open3.capture3(*args, '--', host.to_s)
      keytype = type == 'dsa' ? 'dss' : type
      line = out.lines.find { |l| !l.start_with?('#') && l.split[1].to_s.include?(keytype) }
      key = line&.split&.at(2)
      raise "Unknown SSH Key Type: #{type}" if key.nil? || key == 'type'

      key
    rescue Errno::ENOENT
      raise 'ssh-keyscan is not installed (apt-get install openssh-client)'
    end

    # The machine a task is about: its addresses, SSH port and pinned host keys.
    class Target
      attr_reader :hosts, :port, :keys

      def self.current
        task = LoomHost.current_task
        task.is_a?(Hash) ? from_task(task) : nil
      end

      def self.from_task(task)
        config = task['config'].is_a?(Hash) ? task['config'] : {}
        addresses = config['ipaddresses'].is_a?(Hash) ? config['ipaddresses'].values : []
        hosts = (addresses + [config['ipaddress'], config['hostname']]).select { |h| h.is_a?(String) && !h.empty? }
        auth = config['ssh-auth'].is_a?(Hash) ? config['ssh-auth'] : {}
        port = Integer(auth['port'].to_s, exception: false) if auth['port']
        keys = config['ssh_host_keys'].is_a?(Hash) ? config['ssh_host_keys'].values : []
        new(hosts, port, keys.map { |k| k.to_s.split.find { |part| part.start_with?('AAAA') } || k.to_s.strip })
      end

      def initialize(hosts, port, keys)
        @hosts = hosts
        @port = port
        @keys = keys.reject(&:empty?)
      end

      def for?(host)
        @hosts.include?(host.to_s)
      end

      def port_for(host)
        for?(host) ? @port : nil
      end

      # The Net::SSH options for a connection to `host`: the task's port when the plugin
      # gave none, and the provider's recorded host keys as the only ones accepted.
      def options_for(host, options)
        return options unless for?(host)

        options = options.dup
        options[:port] = @port if @port && !options.key?(:port)
        unless @keys.empty?
          options.delete(:paranoid)
          options[:verify_host_key] = PinnedKeys.new(host, @keys)
          options[:host_key] ||= algorithms
        end
        options[:non_interactive] = true unless options.key?(:non_interactive)
        options
      end

      # The host key algorithms of the pinned keys, so the server presents one of them.
      def algorithms
        @keys.flat_map do |key|
          blob = key.unpack1('m')
          type = blob.byteslice(4, blob.unpack1('N').to_i).to_s
          type == 'ssh-rsa' ? %w[rsa-sha2-512 rsa-sha2-256 ssh-rsa] : [type]
        rescue ArgumentError, TypeError
          []
        end.uniq
      end
    end

    # A Net::SSH host key verifier that accepts exactly the keys a provider recorded.
    class PinnedKeys
      def initialize(host, keys)
        @host = host
        @keys = keys
      end

      def verify(arguments)
        presented = [arguments[:key].to_blob].pack('m0')
        return true if @keys.include?(presented)

        raise Net::SSH::HostKeyMismatch,
              "the host key of #{@host} is not the one its provider recorded (ssh_host_keys); " \
              'if the machine was rebuilt on purpose, remove its ssh_host_keys'
      end

      def verify_signature
        yield
      end
    end

    # Prepended to Net::SSH's singleton: every Net::SSH.start (and so Net::SCP's) to the
    # task's machine gets the task's port and pinned keys, without a change to the plugin.
    module StartWithTarget
      def start(host, user = nil, options = {}, &block)
        target = LoomHost::Ssh::Target.current
        options = target.options_for(host, options || {}) if target
        super(host, user, options, &block)
      end
    end

    def self.hook_net_ssh
      return false unless defined?(::Net::SSH) && ::Net::SSH.respond_to?(:start)
      return true if ::Net::SSH.singleton_class.include?(StartWithTarget)

      ::Net::SSH.singleton_class.prepend(StartWithTarget)
      true
    end
  end
end
