# frozen_string_literal: true

require 'uri'

# Methods that Loom's and Coopr's plugins call and that newer Rubies removed, put back
# with their old meaning, only where the running Ruby lacks them:
#
# - File.exists?, Dir.exists?, FileTest.exists? (removed in Ruby 3.2): exist?
# - Fixnum and Bignum (removed in 3.2): Integer
# - Object#taint, untaint, trust, untrust (removed in 3.2; no-ops since 2.7), and
#   tainted?, untrusted? (always false)
# - Object#=~ (removed in 3.2): nil, as it returned for anything but a String or Regexp
# - URI.escape, URI.encode, URI.unescape, URI.decode (removed in 3.0): the RFC 2396
#   parser's escape and unescape
module LoomHost
  module Compat
    # What this Ruby lacked and was put back, for the log.
    RESTORED = []

    def self.restore(name, missing)
      return unless missing

      yield
      RESTORED << name
    end

    def self.install
      restore('File.exists?', !File.respond_to?(:exists?)) do
        File.singleton_class.send(:define_method, :exists?) { |path| File.exist?(path) }
      end
      restore('Dir.exists?', !Dir.respond_to?(:exists?)) do
        Dir.singleton_class.send(:define_method, :exists?) { |path| Dir.exist?(path) }
      end
      restore('FileTest.exists?', !FileTest.respond_to?(:exists?)) do
        FileTest.singleton_class.send(:define_method, :exists?) { |path| FileTest.exist?(path) }
      end
      restore('Fixnum', !Object.const_defined?(:Fixnum)) { Object.const_set(:Fixnum, Integer) }
      restore('Bignum', !Object.const_defined?(:Bignum)) { Object.const_set(:Bignum, Integer) }
      %i[taint untaint trust untrust].each do |m|
        restore("Object##{m}", !Object.method_defined?(m)) { Object.send(:define_method, m) { self } }
      end
      %i[tainted? untrusted?].each do |m|
        restore("Object##{m}", !Object.method_defined?(m)) { Object.send(:define_method, m) { false } }
      end
      restore('Object#=~', !Object.method_defined?(:=~)) { Object.send(:define_method, :=~) { |_other| nil } }
      parser = defined?(URI::RFC2396_Parser) ? URI::RFC2396_Parser.new : URI::DEFAULT_PARSER
      { escape: :escape, encode: :escape, unescape: :unescape, decode: :unescape }.each do |name, via|
        restore("URI.#{name}", !URI.respond_to?(name)) do
          URI.singleton_class.send(:define_method, name) { |*args| parser.public_send(via, *args) }
        end
      end
      RESTORED
    end
  end
end
