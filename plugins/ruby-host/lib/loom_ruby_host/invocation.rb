# frozen_string_literal: true

module LoomHost
  # Raised in a task's thread when the supervisor cancels it. An Exception, not a
  # StandardError, so that a plugin's `rescue => e` does not swallow it (`rescue
  # Exception` still does: that plugin then finishes the task as it likes).
  class Cancelled < Exception; end # rubocop:disable Lint/InheritException

  # One task on a fresh plugin object, made and called the way Loom or Coopr did, and its
  # answer: the plugin's @result, or a failure saying why.
  class Invocation
    # Coopr's `env` for the objects of Coopr's classes, and their working directory (set
    # at the handshake).
    @coopr_env = {}
    @coopr_cwd = nil
    class << self
      attr_accessor :coopr_env, :coopr_cwd

      # Makes and enters `dir`, again before each task, as Coopr did (a cleaner may have
      # removed it). Every task of this process has the same one, so tasks on other
      # threads are not moved.
      def enter(dir)
        FileUtils.mkdir_p(dir, mode: 0o700)
        Dir.chdir(dir) unless Dir.pwd == dir
      end
    end

    def initialize(klass, task)
      @klass = klass
      @task = task
    end

    def call
      plugin = LoomHost.with_task(@task) { make }
      name = @task['taskName']
      method = Calls.method_for(name)
      if default_run_task?(plugin) && !plugin.respond_to?(method)
        return failure("#{@klass.name} does not define #{method} (needed for #{name})")
      end

      out = LoomHost.with_task(@task) { plugin.runTask }
      answer(out.is_a?(Hash) ? out : plugin.result, method)
    rescue SystemExit, Cancelled
      raise
    rescue Exception => e # rubocop:disable Lint/RescueException -- a plugin's failure is its task's
      failed(e, plugin)
    end

    private

    # A new object: Coopr's classes get (env, task), Loom's (task), and a class whose own
    # initialize takes nothing, nothing.
    def make
      Invocation.enter(Invocation.coopr_cwd) if Invocation.coopr_cwd && @klass <= Coopr::Plugin::Base
      plugin = if @klass <= Coopr::Plugin::Base then @klass.new(Invocation.coopr_env, @task)
               elsif takes_task? then @klass.new(@task)
               else @klass.new
               end
      plugin.task = @task if plugin.respond_to?(:task=)
      plugin.result = LoomHost.autoviv if plugin.respond_to?(:result=) && !plugin.result.is_a?(Hash)
      plugin
    end

    def takes_task?
      params = @klass.instance_method(:initialize).parameters
      params.any? { |type, _| %i[req opt rest].include?(type) }
    end

    def default_run_task?(plugin)
      [::LoomPlugin, Coopr::Plugin::Base].include?(plugin.method(:runTask).owner)
    end

    def answer(result, method)
      unless result.key?('status')
        return failure("#{@klass.name}##{method} did not set @result['status'] (0 for success)", result)
      end

      status = result['status']
      status = Integer(status, exception: false) if status.is_a?(String)
      return failure("@result['status'] must be an integer, not #{status.inspect}", result) unless status.is_a?(Integer)

      out = plain(result)
      out['status'] = status
      out['result'] = out['result'].is_a?(Hash) ? out['result'] : {}
      out['stdout'] = out['stdout'].to_s
      out['stderr'] = out['stderr'].to_s
      out
    end

    # The answer for an exception that escaped the task. A failed remote command
    # (CommandExecutionError, Loom's or Coopr's) gives the command's own stdout and stderr,
    # as Loom and Coopr returned them; anything else its class, message and backtrace.
    def failed(error, plugin)
      partial = plugin.respond_to?(:result) && plugin.result.is_a?(Hash) ? plugin.result : {}
      output = command_output(error)
      return failure("#{error.class}: #{error.message}\n#{(error.backtrace || []).first(20).join("\n")}", partial) unless output

      out, err, code = output
      note = "#{error.class}: #{error.message}#{code.nil? ? ' (no exit code: killed by a signal?)' : " (exit code #{code})"}"
      { 'status' => 1, 'result' => plain(partial['result'].is_a?(Hash) ? partial['result'] : {}),
        'stdout' => out.to_s, 'stderr' => [err.to_s.chomp, note].reject(&:empty?).join("\n") }
    end

    def command_output(error)
      if error.is_a?(::CommandExecutionError) && error.cmdoutput.is_a?(Array)
        error.cmdoutput.first(3)
      elsif error.is_a?(Coopr::Plugin::Utils::CommandExecutionError)
        [error.stdout, error.stderr, error.exit_code]
      end
    end

    def failure(message, result = {})
      out = plain(result)
      stderr = out['stderr'].is_a?(String) && !out['stderr'].empty? ? "#{out['stderr'].chomp}\n" : ''
      { 'status' => 1, 'result' => out['result'].is_a?(Hash) ? out['result'] : {},
        'stdout' => out['stdout'].is_a?(String) ? out['stdout'] : '', 'stderr' => "#{stderr}#{message}" }
    end

    # The result without default procs and without the empty hashes that reading missing
    # keys left behind.
    def plain(value)
      case value
      when Hash
        value.each_with_object({}) do |(k, v), h|
          pv = plain(v)
          h[k.to_s] = pv unless v.is_a?(Hash) && v.default_proc && pv.empty?
        end
      when Array then value.map { |v| plain(v) }
      else value
      end
    end
  end
end
