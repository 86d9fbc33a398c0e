# frozen_string_literal: true

require 'json'

# The protocol side of the host: lines out on the saved fd 1, the task a thread is running,
# and the `log` object plugins write to.
module LoomHost
  LEVELS = %w[trace debug info warn error].freeze
  WRITE_LOCK = Mutex.new

  @log_level = 'info'
  @out = $stdout
  class << self
    attr_accessor :log_level

    # Where protocol lines go: the process's real stdout, saved before it was pointed at
    # stderr (see loom-ruby-host).
    attr_writer :out
  end

  # One line, written whole: a cancel (Thread#raise) arriving meanwhile waits until it is.
  def self.send_message(msg)
    line = "#{JSON.generate(msg)}\n"
    Thread.handle_interrupt(Exception => :never) { WRITE_LOCK.synchronize { @out.write(line) } }
  end

  def self.answer(id, result)
    send_message({ 'jsonrpc' => '2.0', 'id' => id, 'result' => result })
  end

  def self.error(id, code, message)
    send_message({ 'jsonrpc' => '2.0', 'id' => id, 'error' => { 'code' => code, 'message' => message } })
  end

  def self.notify(method, params)
    send_message({ 'jsonrpc' => '2.0', 'method' => method, 'params' => params })
  end

  def self.log(level, message, task_id = current_task_id)
    return if LEVELS.index(level).to_i < LEVELS.index(@log_level).to_i

    params = { 'level' => level, 'message' => message.to_s }
    params['taskId'] = task_id if task_id
    notify('log', params)
  end

  # The task the calling thread runs (set by the server around each task, and given to
  # the threads a task starts), or nil. A thread variable, not a fiber-local one, so that
  # code run in a Fiber or an Enumerator sees it too.
  def self.current_task
    Thread.current.thread_variable_get(:loom_task)
  end

  def self.current_task_id
    task = current_task
    task.is_a?(Hash) ? task['taskId'] : nil
  end

  # Runs the block with `task` as the calling thread's task.
  def self.with_task(task)
    before = Thread.current.thread_variable_get(:loom_task)
    Thread.current.thread_variable_set(:loom_task, task)
    yield
  ensure
    Thread.current.thread_variable_set(:loom_task, before)
  end

  # Prepended to Thread's singleton: a thread started during a task runs under that task
  # (its log lines carry the task's id; its SSH connections get the task's port and keys).
  module InheritTask
    %i[new start fork].each do |name|
      define_method(name) do |*args, &block|
        task = LoomHost.current_task
        return super(*args, &block) unless task && block

        super(*args) do |*block_args|
          Thread.current.thread_variable_set(:loom_task, task)
          block.call(*block_args)
        end
      end
    end
  end
  Thread.singleton_class.prepend(InheritTask)

  # The `log` object of a plugin: Ruby Logger's methods, sent as `log` notifications under
  # the task the calling thread runs.
  class TaskLog
    SEVERITIES = { 'debug' => 0, 'info' => 1, 'warn' => 2, 'error' => 3 }.freeze

    def initialize(task_id = nil)
      @task_id = task_id
    end

    %w[debug info warn error].each do |level|
      define_method(level) do |message = nil, &block|
        message = block.call if message.nil? && block
        LoomHost.log(level, message, @task_id || LoomHost.current_task_id)
        true
      end
      define_method("#{level}?") { true }
    end

    def fatal(message = nil, &block)
      error(message, &block)
    end

    def unknown(message = nil, &block)
      error(message, &block)
    end

    # Logger#add(severity, message): severities as Logger numbers them.
    def add(severity, message = nil, progname = nil, &block)
      level = SEVERITIES.key(severity.to_i) || 'error'
      public_send(level, message || progname, &block)
    end
    alias log add

    def <<(message)
      info(message.to_s.chomp)
    end

    # Levels are the supervisor's (the handshake's logLevel): setting one here is accepted
    # and has no effect, as plugins set them on Loom's logger.
    def level
      0
    end

    def level=(_level); end

    def formatter=(_formatter); end
  end

  # The one log object of threads that run no task.
  PROCESS_LOG = TaskLog.new
end
