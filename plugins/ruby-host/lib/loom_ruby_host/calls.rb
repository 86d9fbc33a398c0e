# frozen_string_literal: true

module LoomHost
  # How a task becomes a method call on a plugin object, in the convention its class was
  # written for:
  #
  # - providers: create/confirm/delete(inputmap). The map has Loom's keys (`flavor`,
  #   `image`, `hostname` or `providerid`, and `fields`, the provider's fields); for the
  #   seed guide's classes it also has `providerid`, `flavor`, `image` and each field at
  #   the top, as the guide showed.
  # - automators, Loom 0.9.7 and Coopr: one hash, `bootstrap({'hostname', 'ipaddress',
  #   'sshauth'})` and install/configure/init/start/stop/remove with `fields` too
  #   (`fields.script`, `fields.args`).
  # - automators, the seed guide: `bootstrap(ssh_auth)` and `install(ssh_auth, script,
  #   data)`.
  #
  # A method that requires two or more arguments is called the guide's way, one that takes
  # one the hash way; `bootstrap`, which takes one either way, follows the class's other
  # methods (and gets a hash that serves both when the class has none). Coopr's classes
  # are always called the hash way. INITIALIZE calls `init`: `initialize` is Ruby's
  # constructor.
  class Calls
    METHODS = {
      'CREATE' => 'create', 'CONFIRM' => 'confirm', 'DELETE' => 'delete',
      'BOOTSTRAP' => 'bootstrap', 'INSTALL' => 'install', 'CONFIGURE' => 'configure',
      'INITIALIZE' => 'init', 'START' => 'start', 'STOP' => 'stop', 'REMOVE' => 'remove'
    }.freeze
    SERVICE_METHODS = %w[install configure init start stop remove].freeze

    def initialize(plugin, task)
      @plugin = plugin
      @task = task.is_a?(Hash) ? task : {}
      @config = @task['config'].is_a?(Hash) ? @task['config'] : {}
    end

    # What both bases' `runTask` do: call the task's method on `plugin` in its
    # convention, and return its @result.
    def self.run(plugin, task)
      method, args = new(plugin, task).call_for(task['taskName'])
      plugin.public_send(method, *args)
      plugin.result
    end

    def self.method_for(name)
      METHODS[name] || name.to_s.downcase
    end

    # [method name, arguments] for the task named `name`.
    def call_for(name)
      method = Calls.method_for(name)
      args = case name
             when 'CREATE', 'CONFIRM', 'DELETE' then [provider_inputs(name)]
             when 'BOOTSTRAP' then [bootstrap_input]
             else service_args(method)
             end
      [method, args]
    end

    # The machine's address: Coopr's `ipaddresses.access_v4`, else Loom's `ipaddress`.
    def ipaddress
      addresses = @config['ipaddresses']
      (addresses.is_a?(Hash) && addresses['access_v4']) || @config['ipaddress']
    end

    private

    def coopr?
      defined?(Coopr::Plugin::Base) && @plugin.is_a?(Coopr::Plugin::Base)
    end

    def provider_inputs(name)
      fields = provider_fields
      loom = if name == 'CREATE'
               { 'flavor' => flavor, 'image' => image, 'hostname' => @config['hostname'], 'fields' => fields }
             else
               { 'providerid' => @config['providerid'], 'fields' => fields }
             end
      return loom if coopr?

      # The guide's inputmap: the fields at the top, then every named input.
      fields.merge('flavor' => flavor, 'image' => image, 'hostname' => @config['hostname'],
                   'providerid' => @config['providerid']).merge(loom)
    end

    def provider_fields
      fields = (@config['provider'].is_a?(Hash) && @config['provider']['provisioner']) || {}
      fields.is_a?(Hash) ? fields : {}
    end

    def flavor
      @config['flavor'] || (@config['hardwaretype'].is_a?(Hash) ? @config['hardwaretype']['flavor'] : nil)
    end

    def image
      @config['image'] || (@config['imagetype'].is_a?(Hash) ? @config['imagetype']['image'] : nil)
    end

    def bootstrap_input
      loom = { 'hostname' => @config['hostname'], 'ipaddress' => ipaddress, 'sshauth' => ssh_auth }
      case class_style
      when :hash then loom
      when :seed then ssh_auth
      else ssh_auth.merge(loom)
      end
    end

    def service_args(method)
      return [service_input] if style_of(method) == :hash

      [ssh_auth, script, data]
    end

    def service_input
      { 'hostname' => @config['hostname'], 'ipaddress' => ipaddress, 'sshauth' => ssh_auth, 'fields' => fields }
    end

    # :seed for a method that requires two or more arguments, else :hash.
    def style_of(method)
      return :hash if coopr? || !@plugin.respond_to?(method)

      required = @plugin.method(method).parameters.count { |type, _| type == :req }
      required >= 2 ? :seed : :hash
    end

    # The style of the class's own service methods: :seed, :hash, or nil when it has none.
    def class_style
      return :hash if coopr?

      own = SERVICE_METHODS.select do |m|
        @plugin.respond_to?(m) && ![::Automator, ::LoomPlugin].include?(@plugin.method(m).owner)
      end
      styles = own.map { |m| style_of(m) }.uniq
      styles.size == 1 ? styles.first : nil
    end

    def ssh_auth
      auth = @config['ssh-auth']
      auth.is_a?(Hash) ? auth : {}
    end

    def action
      service = @config['service'].is_a?(Hash) ? @config['service'] : {}
      service['action'].is_a?(Hash) ? service['action'] : {}
    end

    # Coopr's and Loom 0.9.7's `fields`; for a task in Loom's older form (`script` and
    # `data` on the action), `script` and `args` made from them.
    def fields
      given = action['fields']
      return given if given.is_a?(Hash)

      { 'script' => action['script'], 'args' => action['data'] }.compact
    end

    def script
      action['script'] || fields['script']
    end

    def data
      action['data'] || fields['args'] || fields['data']
    end
  end
end
