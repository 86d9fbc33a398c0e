# frozen_string_literal: true

# Loom's plugin API, at the top level where Loom's plugins find it: the base classes
# Provider and Automator (the seed guide's, and Loom 0.9.7's with `initialize(task)` and
# `runTask`), `log` on every object (Loom's provisioner did `include Logging` at the top
# level), the Logging module, CommandExecutionError and ssh_exec!.

module LoomHost
  # A hash whose missing keys become such hashes: @result['result']['ssh-auth']['user'] = x
  # works with no set-up, as in Loom.
  def self.autoviv
    Hash.new { |h, k| h[k] = Hash.new(&h.default_proc) }
  end
end

# Loom's base class of every plugin.
class LoomPlugin
  attr_accessor :task, :flavor, :image, :hostname, :providerid, :result

  def initialize(task = {}, *_rest)
    @task = task
    @result = LoomHost.autoviv
  end

  def log
    @log ||= LoomHost::TaskLog.new(@task.is_a?(Hash) ? @task['taskId'] : nil)
  end

  # Calls the method for the task in the convention the class was written in
  # (LoomHost::Calls) and returns @result. A plugin may override it, as in Loom.
  def runTask # rubocop:disable Naming/MethodName -- Loom's name
    LoomHost::Calls.run(self, @task)
  end
end

# Base of provider plugins: create, confirm, delete.
class Provider < LoomPlugin
  TASKS = %w[CREATE CONFIRM DELETE].freeze
end

# Base of automator plugins: bootstrap, install, configure, init, start, stop, remove.
class Automator < LoomPlugin
  TASKS = %w[BOOTSTRAP INSTALL CONFIGURE INITIALIZE START STOP REMOVE].freeze
end

# Loom's logging module. Its `log` writes to the supervisor's log under the task the
# calling thread runs; where the log goes and its level are the supervisor's, so
# `configure` and `level=` are accepted and do nothing.
module Logging
  attr_accessor :level

  def log
    Logging.log
  end

  def configure(_out); end

  def self.log
    LoomHost.current_task ? LoomHost::TaskLog.new : LoomHost::PROCESS_LOG
  end

  def self.configure(_out); end

  def self.level=(_level); end
end

# `log` anywhere, as Loom's top-level `include Logging` gave it (private, like Kernel's
# methods, so that no object answers `respond_to?(:log)` because of it).
class Object
  private

  def log
    Logging.log
  end
end

# Loom's exception for a remote command that failed: `cmdoutput` is
# [stdout, stderr, exit code, exit signal]. When it escapes a task, the task's stdout and
# stderr are the command's.
class CommandExecutionError < RuntimeError
  attr_reader :cmdoutput

  def initialize(cmdoutput = nil)
    super('Command execution failed')
    @cmdoutput = cmdoutput
  end
end

# Loom's ssh_exec!: runs `command` over the Net::SSH session `ssh`; returns
# [stdout, stderr, exit code, exit signal], or raises CommandExecutionError when the
# command did not exit 0.
def ssh_exec!(ssh, command)
  log.debug "---ssh-exec command: #{command}"
  output = LoomHost::Ssh.exec(ssh, command)
  raise CommandExecutionError.new(output), 'Command execution failed' unless output[2] == 0 # rubocop:disable Style/NumericPredicate -- nil when signalled
  output
end
