# frozen_string_literal: true

module LoomHost
  # Loads a plugin's folder as Loom did (every *.rb in it) and finds its class; remembers
  # the first problem, naming the file and the cause.
  class Loader
    attr_reader :klass, :problem

    def initialize(dir, classname)
      @dir = File.expand_path(dir)
      @classname = classname
      check_libraries
      load_files if @problem.nil?
      find_class if @problem.nil?
    end

    # The problem for a plugin registered as `kind`, or nil.
    def problem_for(kind)
      return @problem if @problem

      bases = Loader.bases(kind)
      return nil if bases.any? { |base| @klass <= base }

      wanted = bases.map(&:name).join(' or ')
      file, line = Object.const_source_location(@classname)
      where = file ? " (#{File.basename(file)}:#{line})" : ''
      "class #{@classname}#{where} extends #{base_name}, but the plugin is registered as a #{kind}: it must extend #{wanted}"
    end

    # Whether objects of the class are made Coopr's way, with (env, task).
    def coopr?
      !@klass.nil? && @klass <= Coopr::Plugin::Base
    end

    def self.bases(kind)
      kind == 'provider' ? [::Provider, Coopr::Plugin::Provider] : [::Automator, Coopr::Plugin::Automator]
    end

    private

    # Libraries the plugin's code needs that are not installed: named with the gem and the
    # package that provides them, before any of its code runs.
    def check_libraries
      missing = Gems.missing(@dir)
      @problem = "#{missing.join('; ')} (needed by the plugin in #{@dir})" unless missing.empty?
    end

    def load_files
      files = Dir[File.join(@dir, '*.rb')].sort
      return @problem = "no *.rb file in #{@dir}" if files.empty?

      files.each do |file|
        @problem = load_file(file)
        break if @problem
      end
    end

    def load_file(file)
      require file
      nil
    rescue SyntaxError => e
      "#{File.basename(file)}: syntax error: #{e.message.lines.first(3).join.strip}"
    rescue Gem::LoadError => e
      "#{File.basename(file)}: #{Gems.describe_gem(e.name.to_s)} (at #{location(e)})"
    rescue LoadError => e
      "#{File.basename(file)}: #{Gems.describe(e.path || e.message)} (at #{location(e)})"
    rescue ScriptError, StandardError => e
      "#{File.basename(file)}: #{e.class}: #{e.message} (at #{location(e)})"
    end

    def find_class
      @klass = @classname.split('::').inject(Object) { |scope, name| scope.const_get(name, false) }
      return if @klass.is_a?(Class)

      @problem = "#{@classname} in #{@dir} is not a class"
      @klass = nil
    rescue NameError
      rbs = Dir[File.join(@dir, '*.rb')].map { |f| File.basename(f) }.sort.join(', ')
      @problem = "class #{@classname} is not defined by any of #{rbs} in #{@dir}"
    end

    def base_name
      [::Provider, ::Automator, Coopr::Plugin::Provider, Coopr::Plugin::Automator].find { |b| @klass < b }&.name ||
        @klass.superclass.to_s
    end

    def location(error)
      trace = error.backtrace || []
      line = trace.find { |l| l.start_with?(@dir) } || trace.first
      line ? line.sub("#{@dir}/", '') : 'unknown'
    end
  end
end
