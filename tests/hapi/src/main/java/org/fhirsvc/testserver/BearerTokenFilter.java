package org.fhirsvc.testserver;

import jakarta.servlet.FilterChain;
import jakarta.servlet.ServletException;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.List;
import org.springframework.web.filter.OncePerRequestFilter;

/**
 * Stand-in for a protected FHIR server: requests must carry {@code Authorization: Bearer <token>} or get 401.
 *
 * <p>{@code GET <base>/metadata} stays open, as SMART servers publish their CapabilityStatement without auth (and
 * our readiness probe needs it). This is a test double for fhirsvc's token handling, not real security: one
 * static token, no scopes.
 *
 * <p>{@code guardedPaths} empty means every path is guarded; otherwise only URLs under those base paths are.
 */
public class BearerTokenFilter extends OncePerRequestFilter {

	private final byte[] expected;
	private final List<String> guardedPaths;

	public BearerTokenFilter(String token, List<String> guardedPaths) {
		this.expected = token == null ? null : token.getBytes(StandardCharsets.UTF_8);
		this.guardedPaths = List.copyOf(guardedPaths);
	}

	@Override
	protected void doFilterInternal(HttpServletRequest req, HttpServletResponse resp, FilterChain chain)
			throws ServletException, IOException {
		if (expected == null || !isGuarded(req) || isOpenMetadata(req) || hasValidToken(req)) {
			chain.doFilter(req, resp);
			return;
		}
		resp.setStatus(HttpServletResponse.SC_UNAUTHORIZED);
		resp.setHeader("WWW-Authenticate", "Bearer realm=\"fhirsvc-hapi-testserver\"");
		resp.setContentType("application/fhir+json;charset=UTF-8");
		String message = req.getHeader("Authorization") == null ? "Missing bearer token" : "Invalid bearer token";
		resp.getWriter()
				.write("{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"error\",\"code\":\"login\","
						+ "\"diagnostics\":\"" + message + "\"}]}");
	}

	private String pathWithinApp(HttpServletRequest req) {
		String uri = req.getRequestURI();
		String ctx = req.getContextPath();
		return ctx != null && !ctx.isEmpty() && uri.startsWith(ctx) ? uri.substring(ctx.length()) : uri;
	}

	private boolean isGuarded(HttpServletRequest req) {
		if (guardedPaths.isEmpty()) {
			return true;
		}
		String path = pathWithinApp(req);
		for (String base : guardedPaths) {
			if (path.equals(base) || path.startsWith(base + "/")) {
				return true;
			}
		}
		return false;
	}

	/** GET (or HEAD) of {@code <any base>/metadata}, with or without a trailing slash or query string. */
	private boolean isOpenMetadata(HttpServletRequest req) {
		String method = req.getMethod();
		if (!"GET".equals(method) && !"HEAD".equals(method)) {
			return false;
		}
		String path = pathWithinApp(req);
		if (path.endsWith("/")) {
			path = path.substring(0, path.length() - 1);
		}
		// The servlet path is the FHIR base the request was mapped to (e.g. /fhir or /fhir-secure).
		return path.equals(req.getServletPath() + "/metadata") && !req.getServletPath().isEmpty();
	}

	private boolean hasValidToken(HttpServletRequest req) {
		String header = req.getHeader("Authorization");
		if (header == null || header.length() < 7 || !header.regionMatches(true, 0, "Bearer ", 0, 7)) {
			return false;
		}
		byte[] given = header.substring(7).trim().getBytes(StandardCharsets.UTF_8);
		// Constant-time comparison: cheap, and keeps the example honest.
		return MessageDigest.isEqual(given, expected);
	}
}
