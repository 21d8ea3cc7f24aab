-- mod_causeway_route: send ALL outgoing server-to-server connections of this
-- Prosody to one address: Causeway's core, which carries federation through
-- the traversal tunnel to the edge in the DMZ.
--
-- For Prosody 0.12.x (0.12.3 lacks the hooks that mod_s2sout_override needs).
-- It wraps net.resolvers.service.new, which mod_s2s calls for every new
-- outgoing session:
--   * "xmpp-server" (STARTTLS, XEP-0220 dialback): a fixed resolver to
--     causeway_route_host:causeway_route_port, no SRV lookup at all;
--   * "xmpps-server" (XEP-0368 direct TLS): a resolver with no targets, so
--     mod_s2s moves straight on to the one above;
--   * anything else: unchanged.
-- Everything else in mod_s2s (STARTTLS, dialback, SASL EXTERNAL) is untouched.
-- Dialback verification and MUC component traffic go through the same route.
--
-- Configuration (global section):
--   plugin_paths = { "/usr/local/lib/causeway/prosody" }  -- where this file is
--   modules_enabled = { ...; "dialback"; "causeway_route" }
--   causeway_route_host = "10.1.2.3"   -- core's s2s listener: IP or host name
--   causeway_route_port = 5269         -- optional, default 5269
--   causeway_route_except = { }        -- optional: domains resolved normally
--
-- No dependencies beyond Prosody itself.

module:set_global();

local basic = require "net.resolvers.basic";
local service_resolver = require "net.resolvers.service";

local route_host = module:get_option_string("causeway_route_host");
local route_port = module:get_option_number("causeway_route_port", 5269);
local except = module:get_option_set("causeway_route_except", {});

if not route_host then
	module:log("error", "causeway_route_host is not set: outgoing s2s is NOT routed to Causeway");
	return;
end

-- A resolver that yields no target (net.connect then tries the next resolver).
local no_targets_methods = {};
function no_targets_methods:next(cb) -- luacheck: ignore 212/self
	cb(nil);
end
local no_targets_mt = { __index = no_targets_methods };
local function no_targets(hostname)
	return setmetatable({
		hostname = hostname;
		last_error = "direct TLS s2s disabled by mod_causeway_route";
	}, no_targets_mt);
end

local original_new = service_resolver.new;

local function routed_new(hostname, service, conn_type, extra)
	if (service == "xmpp-server" or service == "xmpps-server") and not except:contains(hostname) then
		if service == "xmpps-server" then
			return no_targets(hostname);
		end
		module:log("debug", "s2s to %s goes to %s:%d", hostname, route_host, route_port);
		return basic.new(route_host, route_port, conn_type, extra);
	end
	return original_new(hostname, service, conn_type, extra);
end

service_resolver.new = routed_new;

function module.unload()
	if service_resolver.new == routed_new then
		service_resolver.new = original_new;
	end
end

module:log("info", "Routing all outgoing s2s to %s:%d (Causeway core)", route_host, route_port);
