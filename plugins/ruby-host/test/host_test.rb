# frozen_string_literal: true

# The host's own pieces, tested without a supervisor: `ruby test/host_test.rb` (run by
# tests/tests/ruby.rs). The end-to-end behaviour is tested from Rust.

require 'minitest/autorun'
require 'json'
require 'tmpdir'
require 'tempfile'
require 'open3'
require 'timeout'

LIB = File.expand_path('../lib/loom_ruby_host', __dir__)
%w[wire compat gems ssh calls loom_api coopr_api loader invocation].each { |f| require File.join(LIB, f) }

class CompatTest < Minitest::Test
  def test_removed_methods_come_back_only_where_missing
    File.singleton_class.send(:remove_method, :exists?) if File.respond_to?(:exists?)
    refute File.respond_to?(:exists?)
    restored = LoomHost::Compat.install
    assert_includes restored, 'File.exists?'
    assert File.exists?(__FILE__)
    refute File.exists?('/no/such/file')
    # A second install finds nothing missing.
    before = restored.dup
    LoomHost::Compat.install
    assert_equal before, LoomHost::Compat::RESTORED
    assert_equal 'a%20b', URI.escape('a b')
    assert_equal Integer, Fixnum
  end
end

# Records how it was called.
class SeedStyle < Automator
  def bootstrap(ssh_auth)
    @result['got'] = ssh_auth
  end

  def install(ssh_auth, script, data)
    @result['got'] = [ssh_auth, script, data]
  end
end

class HashStyle < Automator
  def initialize(task)
    super(task)
  end

  def bootstrap(inputmap)
    @result['got'] = inputmap
  end

  def install(inputmap)
    @result['got'] = inputmap
  end
end

class OnlyBootstrap < Automator
  def bootstrap(input)
    @result['got'] = input
  end
end

class CooprStyle < Coopr::Plugin::Provider
  def create(inputmap)
    @result['got'] = inputmap
  end
end

class SeedProvider < Provider
  def create(inputmap)
    @result['got'] = inputmap
  end
end

class CallsTest < Minitest::Test
  AUTH = { 'user' => 'root', 'password' => 'pw', 'port' => 2222 }.freeze

  def task(name, config)
    { 'taskId' => 't', 'taskName' => name, 'config' => config }
  end

  def call(klass, name, config, *args)
    plugin = klass.new(*args, task(name, config))
    method, call_args = LoomHost::Calls.new(plugin, plugin.task).call_for(name)
    plugin.public_send(method, *call_args)
    plugin.result['got']
  end

  def automator_config
    { 'ssh-auth' => AUTH, 'hostname' => 'h', 'ipaddresses' => { 'access_v4' => '10.0.0.1' }, 'ipaddress' => '10.9.9.9',
      'service' => { 'action' => { 'type' => 'x', 'script' => 's.sh', 'data' => 'd' } } }
  end

  def test_methods_requiring_several_arguments_are_called_the_seed_guides_way
    assert_equal [AUTH, 's.sh', 'd'], call(SeedStyle, 'INSTALL', automator_config)
    assert_equal AUTH, call(SeedStyle, 'BOOTSTRAP', automator_config)
  end

  def test_one_argument_methods_get_loom_0_9_7s_hash
    got = call(HashStyle, 'INSTALL', automator_config)
    assert_equal({ 'hostname' => 'h', 'ipaddress' => '10.0.0.1', 'sshauth' => AUTH,
                   'fields' => { 'script' => 's.sh', 'args' => 'd' } }, got)
    assert_equal({ 'hostname' => 'h', 'ipaddress' => '10.0.0.1', 'sshauth' => AUTH },
                 call(HashStyle, 'BOOTSTRAP', automator_config))
    # Coopr's `fields` when the task has them.
    config = automator_config
    config['service'] = { 'action' => { 'type' => 'x', 'fields' => { 'script' => 'a', 'args' => 'b' } } }
    assert_equal({ 'script' => 'a', 'args' => 'b' }, call(HashStyle, 'INSTALL', config)['fields'])
  end

  def test_a_lone_bootstrap_gets_a_hash_that_serves_both
    got = call(OnlyBootstrap, 'BOOTSTRAP', automator_config)
    assert_equal 'root', got['user']
    assert_equal AUTH, got['sshauth']
    assert_equal '10.0.0.1', got['ipaddress']
  end

  def test_providers_get_loom_keys_and_the_seed_guides_extras_except_on_coopr
    config = { 'flavor' => 'f', 'image' => 'i', 'hostname' => 'h', 'providerid' => 'p',
               'provider' => { 'provisioner' => { 'region' => 'r' } } }
    assert_equal({ 'flavor' => 'f', 'image' => 'i', 'hostname' => 'h', 'fields' => { 'region' => 'r' } },
                 call(CooprStyle, 'CREATE', config, {}))
    seed = call(SeedProvider, 'CREATE', config)
    assert_equal 'r', seed['region']
    assert_equal 'p', seed['providerid']
    assert_equal({ 'region' => 'r' }, seed['fields'])
  end
end

class SshTargetTest < Minitest::Test
  KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOoLE1T1io/f1xB0y6l2BWGTXR94LTHv3Y4ohpjyM/Bl'

  def target
    LoomHost::Ssh::Target.from_task('config' => { 'ipaddresses' => { 'access_v4' => '127.0.0.1' },
                                                  'ssh-auth' => { 'port' => '2201' },
                                                  'ssh_host_keys' => { 'ed25519' => KEY } })
  end

  def test_the_tasks_machine_gets_its_port_and_pinned_key_and_others_nothing
    opts = target.options_for('127.0.0.1', { paranoid: false, password: 'x' })
    assert_equal 2201, opts[:port]
    refute opts.key?(:paranoid)
    assert_kind_of LoomHost::Ssh::PinnedKeys, opts[:verify_host_key]
    assert_equal ['ssh-ed25519'], opts[:host_key]
    assert_equal 'x', opts[:password]
    # A port the plugin gave stays.
    assert_equal 22, target.options_for('127.0.0.1', { port: 22 })[:port]
    other = { password: 'x' }
    assert_same other, target.options_for('10.1.1.1', other)
  end
end

class GemsTest < Minitest::Test
  def test_top_level_requires_and_what_the_bases_loaded_are_needed_indented_ones_not
    Dir.mktmpdir do |dir|
      File.write(File.join(dir, 'p.rb'), "gem 'knife-joyent', '= 0.4.8'\nrequire 'fog/joyent'\nrequire_relative 'lib/x'\nclass P < Coopr::Plugin::Provider; end\n")
      Dir.mkdir(File.join(dir, 'lib'))
      File.write(File.join(dir, 'lib', 'x.rb'), "require \"zzz/top\"\nbegin\n  require 'optional/thing'\nrescue LoadError\nend\n")
      needed = LoomHost::Gems.needed(dir)
      assert_equal [%w[knife-joyent], %w[fog/joyent net/ssh net/scp deep_merge/rails_compat zzz/top]], needed
      missing = LoomHost::Gems.missing(dir)
      assert_includes missing, 'the Ruby library fog/joyent (gem fog-joyent) is not installed: gem install fog-joyent (no Debian package provides it)'
      assert_includes missing, 'the Ruby library zzz/top is not installed'
      assert_includes missing, 'the gem knife-joyent is not installed: gem install knife-joyent (no Debian package provides it)'
    end
  end
end

# The host as the supervisor runs it: a process speaking JSON-RPC on stdin and stdout.
class ServerTest < Minitest::Test
  HOST = File.expand_path('../loom-ruby-host', __dir__)

  def start(dir, classname)
    stdin, stdout, stderr, wait = Open3.popen3('ruby', HOST, '--class', classname, '--dir', dir)
    @io = [stdin, stdout, stderr, wait]
    stdin.sync = true
  end

  def send_line(msg)
    @io[0].puts(msg.is_a?(String) ? msg : JSON.generate(msg))
  end

  def answer
    line = Timeout.timeout(60) { @io[1].gets }
    JSON.parse(line)
  end

  def answer_for(id)
    loop do
      msg = answer
      return msg if msg['id'] == id
    end
  end

  def handshake
    send_line({ 'jsonrpc' => '2.0', 'id' => 1, 'method' => 'handshake',
                'params' => { 'protocolVersions' => [1], 'kind' => 'automator', 'settings' => {} } })
    answer_for(1)
  end

  def teardown
    return unless @io

    @io[0].close unless @io[0].closed?
    Process.kill('KILL', @io[3].pid) rescue nil # rubocop:disable Style/RescueModifier
  end

  def test_a_request_it_cannot_read_is_answered_and_the_host_goes_on
    Dir.mktmpdir do |dir|
      File.write(File.join(dir, 'a.rb'), "class A < Automator\nend\n")
      start(dir, 'A')
      send_line('{"jsonrpc":"2.0","id":7,"method":"handshake","params":[1]}')
      assert_equal(-32_602, answer_for(7)['error']['code'])
      send_line({ 'jsonrpc' => '2.0', 'id' => 8, 'method' => 'ping' })
      assert_equal({}, answer_for(8)['result'])
    end
  end

  def test_a_cancel_stops_a_task_whose_code_rescues_standard_errors
    Dir.mktmpdir do |dir|
      File.write(File.join(dir, 'a.rb'), <<~RUBY)
        class A < Automator
          def install(_auth, _script, _data)
            begin
              log.info 'sleeping'
              sleep 300
            rescue => e
              @result['status'] = 0
            end
          end
        end
      RUBY
      start(dir, 'A')
      assert_equal 1, handshake['result']['protocolVersion']
      send_line({ 'jsonrpc' => '2.0', 'id' => 2, 'method' => 'task',
                  'params' => { 'taskId' => 't', 'taskName' => 'INSTALL', 'config' => {} } })
      # The log line says the task's code is running; then cancel it.
      msg = nil
      msg = answer until msg && msg['method'] == 'log' && msg['params']['message'] == 'sleeping'
      send_line({ 'jsonrpc' => '2.0', 'method' => 'cancel', 'params' => { 'taskId' => 't' } })
      result = answer_for(2)['result']
      assert_equal [1, true], [result['status'], result['cancelled']], result.inspect
      # The worker lives on.
      send_line({ 'jsonrpc' => '2.0', 'id' => 3, 'method' => 'task',
                  'params' => { 'taskId' => 'u', 'taskName' => 'CREATE', 'config' => {} } })
      assert_equal(-32_002, answer_for(3)['error']['code'], 'an automator does not run CREATE')
    end
  end
  def test_a_cancel_for_a_task_still_queued_is_kept_and_the_task_never_runs
    Dir.mktmpdir do |dir|
      gate = File.join(dir, 'gate')
      File.write(File.join(dir, 'a.rb'), <<~RUBY)
        class A < Automator
          def install(_auth, _script, data)
            log.info "running \#{data}"
            sleep 0.05 until File.exist?(#{gate.inspect})
            @result['status'] = 0
          end
        end
      RUBY
      start(dir, 'A')
      assert_equal 1, handshake['result']['protocolVersion']
      task = ->(id, task_id) { { 'jsonrpc' => '2.0', 'id' => id, 'method' => 'task',
                                 'params' => { 'taskId' => task_id, 'taskName' => 'INSTALL',
                                               'config' => { 'service' => { 'action' => { 'data' => task_id } } } } } }
      # One worker: the first task holds it, the second waits in the queue when cancelled.
      send_line(task.call(2, 'first'))
      msg = nil
      msg = answer until msg && msg['method'] == 'log'
      send_line(task.call(3, 'second'))
      send_line({ 'jsonrpc' => '2.0', 'method' => 'cancel', 'params' => { 'taskId' => 'second' } })
      send_line({ 'jsonrpc' => '2.0', 'id' => 4, 'method' => 'ping' })
      answer_for(4) # the cancel was read before the ping
      File.write(gate, '')
      seen = []
      results = {}
      until results.size == 2
        m = answer
        seen << m['params']['message'] if m['method'] == 'log'
        results[m['id']] = m['result'] if [2, 3].include?(m['id'])
      end
      assert_equal 0, results[2]['status'], results[2].inspect
      assert_equal [1, true], [results[3]['status'], results[3]['cancelled']], results[3].inspect
      refute seen.any? { |l| l.include?('running second') }, seen.inspect
    end
  end
end
