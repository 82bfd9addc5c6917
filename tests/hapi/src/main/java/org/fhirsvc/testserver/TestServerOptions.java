package org.fhirsvc.testserver;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;

/**
 * Start-up options of the test server.
 *
 * <p>Each option can come from the command line ({@code --port 8080} or {@code --port=8080}), a system property
 * ({@code -Dhapi.port=8080}) or an environment variable ({@code FHIRSVC_HAPI_PORT=8080}); the command line wins,
 * then system properties, then the environment. (The FHIRSVC_ prefix keeps unrelated HAPI_* variables out.) We
 * parse these ourselves rather than through Spring's property binding so that {@code --help} and bad values fail
 * fast, before the (slow) Spring context starts.
 */
public record TestServerOptions(
		String host,
		int port,
		String basePath,
		boolean searchCache,
		String token,
		String secureBasePath) {

	/** Same window as the public hapi.fhir.org server and the starter project's default. */
	public static final long SEARCH_CACHE_MILLIS = 60_000L;

	static final String USAGE = String.join(
			"\n",
			"usage: hapi-testserver [--port N] [--host ADDR] [--base-path /fhir] [--search-cache on|off]",
			"                       [--token T [--secure-base-path /fhir-secure]]",
			"  --port N              HTTP port (default 8080; FHIRSVC_HAPI_PORT, -Dhapi.port)",
			"  --host ADDR           bind address (default 127.0.0.1; FHIRSVC_HAPI_HOST, -Dhapi.host)",
			"  --base-path P         FHIR base path (default /fhir; FHIRSVC_HAPI_BASE_PATH, -Dhapi.base-path)",
			"  --search-cache on|off reuse identical search results for 60 s like public HAPI (on), or never (off,",
			"                        the default; FHIRSVC_HAPI_SEARCH_CACHE, -Dhapi.search-cache)",
			"  --token T             require 'Authorization: Bearer T' (except GET <base>/metadata)",
			"                        (FHIRSVC_HAPI_TOKEN, -Dhapi.token)",
			"  --secure-base-path P  with --token: serve the same data a second time under P; only P needs the",
			"                        token and the base path stays open (FHIRSVC_HAPI_SECURE_BASE_PATH,",
			"                        -Dhapi.secure-base-path)");

	public boolean tokenRequired() {
		return token != null;
	}

	/**
	 * URL path prefixes the token filter guards; empty means "every path" (used only when a token is set): with a
	 * secure base path only that mount is guarded, otherwise the whole server is.
	 */
	public List<String> tokenGuardedPaths() {
		return secureBasePath != null ? List.of(secureBasePath) : List.of();
	}

	public List<String> allBasePaths() {
		List<String> paths = new ArrayList<>();
		paths.add(basePath);
		if (secureBasePath != null) {
			paths.add(secureBasePath);
		}
		return paths;
	}

	public static TestServerOptions parse(String[] args, Map<String, String> env, Properties sysProps) {
		Map<String, String> cli = new java.util.HashMap<>();
		for (int i = 0; i < args.length; i++) {
			String arg = args[i];
			if (arg.equals("--help") || arg.equals("-h")) {
				throw new UsageException(null);
			}
			if (!arg.startsWith("--")) {
				throw new UsageException("unexpected argument: " + arg);
			}
			String name;
			String value;
			int eq = arg.indexOf('=');
			if (eq > 0) {
				name = arg.substring(2, eq);
				value = arg.substring(eq + 1);
			} else {
				if (i + 1 >= args.length) {
					throw new UsageException("missing value for " + arg);
				}
				name = arg.substring(2);
				value = args[++i];
			}
			cli.put(name, value);
		}
		for (String name : cli.keySet()) {
			if (!List.of("port", "host", "base-path", "search-cache", "token", "secure-base-path").contains(name)) {
				throw new UsageException("unknown option: --" + name);
			}
		}

		String portText = lookup("port", cli, env, sysProps, "8080");
		int port;
		try {
			port = Integer.parseInt(portText);
		} catch (NumberFormatException e) {
			throw new UsageException("--port must be a number, got: " + portText);
		}
		if (port < 0 || port > 65535) {
			throw new UsageException("--port out of range: " + port);
		}
		String host = lookup("host", cli, env, sysProps, "127.0.0.1");
		String basePath = normalisePath(lookup("base-path", cli, env, sysProps, "/fhir"), "--base-path");

		String cacheText = lookup("search-cache", cli, env, sysProps, "off").toLowerCase(Locale.ROOT);
		boolean searchCache;
		switch (cacheText) {
			case "on", "true", "1", "yes" -> searchCache = true;
			case "off", "false", "0", "no" -> searchCache = false;
			default -> throw new UsageException("--search-cache must be on or off, got: " + cacheText);
		}

		String token = emptyToNull(lookup("token", cli, env, sysProps, null));
		String secure = emptyToNull(lookup("secure-base-path", cli, env, sysProps, null));
		if (secure != null) {
			secure = normalisePath(secure, "--secure-base-path");
			if (token == null) {
				throw new UsageException("--secure-base-path needs --token");
			}
			if (secure.equals(basePath) || secure.startsWith(basePath + "/") || basePath.startsWith(secure + "/")) {
				throw new UsageException("--secure-base-path must not overlap --base-path");
			}
		}
		return new TestServerOptions(host, port, basePath, searchCache, token, secure);
	}

	private static String lookup(
			String name, Map<String, String> cli, Map<String, String> env, Properties sysProps, String dflt) {
		if (cli.containsKey(name)) {
			return cli.get(name);
		}
		String prop = sysProps.getProperty("hapi." + name);
		if (prop != null) {
			return prop;
		}
		String envValue = env.get("FHIRSVC_HAPI_" + name.toUpperCase(Locale.ROOT).replace('-', '_'));
		return envValue != null ? envValue : dflt;
	}

	private static String normalisePath(String path, String option) {
		String p = path.trim();
		if (!p.startsWith("/")) {
			p = "/" + p;
		}
		while (p.endsWith("/")) {
			p = p.substring(0, p.length() - 1);
		}
		// "/" would swallow every URL (and clash with the servlet container's default servlet).
		if (p.isEmpty() || !p.matches("(/[A-Za-z0-9._~-]+)+")) {
			throw new UsageException(option + " must be a non-root path like /fhir, got: " + path);
		}
		return p;
	}

	private static String emptyToNull(String s) {
		return s == null || s.isEmpty() ? null : s;
	}

	/** Bad command line: message (or null for --help) goes to the user together with the usage text. */
	public static final class UsageException extends RuntimeException {
		public UsageException(String message) {
			super(message);
		}
	}
}
