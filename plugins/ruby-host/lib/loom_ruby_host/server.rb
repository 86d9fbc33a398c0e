# frozen_string_literal: true

require 'fileutils'
require 'tmpdir'

module LoomHost
  # Reads requests from stdin on the main thread and runs tasks on worker threads.
  class Server
    def initialize(loader, concurrency)
      @loader = loader
      @concurrency = [concurrency, 1].max
      @queue = Queue.new
      @running = {}
      # Tasks taken but not yet running, and those of them cancelled meanwhile: a cancel
      # that arrives before a worker thread picks its task up is kept, not lost.
      @waiting = {}
      @lock = Mutex.new
      @ready = false
      @shutting_down = false
      @workers = []
    end

    def run
      $stdin.each_line do |line|
        next if line.strip.empty?

        begin
          msg = JSON.parse(line)
        rescue JSON::ParserError => e
          LoomHost.error(nil, -32_700, "not JSON: #{e.message[0, 100]}")
          next
        end
        next unless msg.is_a?(Hash)

        begin
          dispatch(msg)
        rescue StandardError => e
          # A request this host could not take (odd params, say) never ends it.
          LoomHost.error(msg['id'], -32_603, "#{e.class}: #{e.message[0, 200]}") unless msg['id'].nil?
        end
      end
      # stdin closed: finish what was taken, then exit.
      @concurrency.times { @queue << nil }
      @workers.each(&:join)
    end

    private

    def dispatch(msg)
      method = msg['method']
      id = msg['id']
      params = msg['params'] || {}
      return LoomHost.error(id, -32_602, 'params must be an object') unless params.is_a?(Hash) || id.nil?

      if id.nil?
        cancel(params['taskId']) if method == 'cancel' && params.is_a?(Hash)
        return
      end
      case method
      when 'handshake' then handshake(id, params)
      when 'task' then enqueue(id, params)
      when 'ping' then LoomHost.answer(id, {})
      when 'shutdown'
        @shutting_down = true
        LoomHost.answer(id, {})
      else LoomHost.error(id, -32_601, "unknown method #{method.inspect}")
      end
    end

    def handshake(id, params)
      unless (params['protocolVersions'] || []).include?(1)
        return LoomHost.error(id, -32_001, 'this Ruby host speaks protocol version 1 only')
      end

      @kind = params['kind']
      LoomHost.log_level = params['logLevel'] || 'info'
      problem = @loader.problem_for(@kind) || coopr_setup(params)
      return LoomHost.error(id, -32_603, "cannot load the Ruby plugin: #{problem}") if problem

      @ready = true
      start_workers
      LoomHost.log('debug', "restored for this Ruby: #{Compat::RESTORED.join(', ')}", nil) unless Compat::RESTORED.empty?
      LoomHost.answer(id, { 'protocolVersion' => 1, 'name' => @loader.klass.name, 'version' => "ruby #{RUBY_VERSION}",
                            'tasks' => tasks, 'maxConcurrency' => @concurrency })
    end

    # Coopr's plugins run with `env` (`work_dir`, `tenant`) and in the working directory
    # Coopr gave them, <work_dir>/<tenant>/<providertypes|automatortypes>/<name>, where
    # they keep resources (the shell automator's scripts and archives, SSH keys). From the
    # manifest's settings `workDir` and `tenant` (default: superadmin, Coopr's). Without
    # `workDir`: a folder of this user's own under the temporary folder, made 0700 and
    # refused when someone else made it first. Returns a problem, or nil.
    def coopr_setup(params)
      return nil unless @loader.coopr?

      settings = params['settings'].is_a?(Hash) ? params['settings'] : {}
      work_dir = settings['workDir'] ? File.expand_path(settings['workDir'].to_s) : private_work_dir
      tenant = (settings['tenant'] || 'superadmin').to_s
      name = (params['plugin'] || @loader.klass.name).to_s
      cwd = File.join(work_dir, tenant, "#{@kind}types", name)
      Invocation.coopr_env = settings.merge(work_dir: work_dir, tenant: tenant, name: name,
                                            'provisioner.work.dir' => work_dir)
      Invocation.coopr_cwd = cwd
      Invocation.enter(cwd)
      nil
    rescue SystemCallError, SecurityError => e
      "Coopr's working directory #{cwd || work_dir} cannot be used: #{e.message} " \
        '(set "workDir" in the manifest\'s settings to a folder this plugin\'s user may write)'
    end

    def private_work_dir
      dir = File.join(Dir.tmpdir, "loom-ruby-host-#{Process.uid}")
      begin
        Dir.mkdir(dir, 0o700)
      rescue Errno::EEXIST
        nil
      end
      stat = File.lstat(dir)
      unless stat.directory? && stat.uid == Process.uid && (stat.mode & 0o077).zero?
        raise SecurityError, "#{dir} is not a folder of this user's own, closed to others"
      end

      dir
    end

    def tasks
      @kind == 'provider' ? Provider::TASKS : Automator::TASKS
    end

    def start_workers
      return unless @workers.empty?

      @workers = Array.new(@concurrency) do
        Thread.new do
          while (job = @queue.pop)
            run_task(*job)
          end
        end
      end
    end

    def enqueue(id, task)
      return LoomHost.error(id, -32_004, 'task before handshake') unless @ready
      return LoomHost.error(id, -32_003, 'shutting down') if @shutting_down
      unless task.is_a?(Hash) && task['taskId'].is_a?(String)
        return LoomHost.error(id, -32_602, 'the task has no taskId')
      end
      unless tasks.include?(task['taskName'])
        return LoomHost.error(id, -32_002, "a #{@kind} does not run #{task['taskName'].to_s[0, 40].inspect} tasks")
      end

      @lock.synchronize { @waiting[task['taskId']] = :queued }
      @queue << [id, task]
    end

    # Raised in the task's thread while the task runs, and only then: under the lock that
    # the thread takes to say it is done, so it cannot land in the next task.
    def cancel(task_id)
      @lock.synchronize do
        if @running.key?(task_id)
          @running[task_id].raise(Cancelled, 'cancelled by the supervisor')
        elsif @waiting.key?(task_id)
          @waiting[task_id] = :cancelled
        end
      end
    end

    # One task. A cancel is taken only while the task's code runs; its bookkeeping and
    # its answer are never cut short by one.
    def run_task(id, task)
      Thread.handle_interrupt(Cancelled => :never) do
        cancelled = @lock.synchronize do
          @running[task['taskId']] = Thread.current
          @waiting.delete(task['taskId']) == :cancelled
        end
        result = begin
          raise Cancelled, 'cancelled by the supervisor' if cancelled

          Thread.handle_interrupt(Cancelled => :immediate) { compute(task) }
        rescue Cancelled => e
          { 'status' => 1, 'result' => {}, 'stdout' => '', 'stderr' => "#{e.message}\n", 'cancelled' => true }
        ensure
          @lock.synchronize { @running.delete(task['taskId']) }
        end
        LoomHost.answer(id, result)
      end
    rescue Cancelled
      nil # a cancel that arrived as the task ended: it was answered
    rescue SystemExit => e
      # `exit` or `abort` in a plugin ended Loom's worker; it ends this process too.
      $stderr.flush
      Kernel.exit!(e.status.zero? ? 1 : e.status)
    end

    # `check`'s wait task (PROTOCOL.md section 10), only when `check` started us.
    CHECKING = ENV['LOOM_CHECK'] == '1'

    def compute(task)
      wait = CHECKING ? check_wait(task) : nil
      wait ? wait_task(wait) : Invocation.new(@loader.klass, task).call
    end

    def check_wait(task)
      config = task['config'].is_a?(Hash) ? task['config'] : {}
      wait = config['loom-check'].is_a?(Hash) ? config['loom-check']['waitSecs'] : nil
      wait.is_a?(Numeric) && wait.positive? && wait <= 300 ? wait : nil
    end

    def wait_task(secs)
      sleep(secs)
      { 'status' => 0, 'result' => {}, 'stdout' => '', 'stderr' => '' }
    end
  end
end
