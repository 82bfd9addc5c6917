package org.fhirsvc.testserver;

import java.util.HashMap;
import java.util.Map;
import org.springframework.boot.Banner;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.SpringBootConfiguration;
import org.springframework.boot.autoconfigure.ImportAutoConfiguration;
import org.springframework.boot.autoconfigure.context.PropertyPlaceholderAutoConfiguration;
import org.springframework.boot.autoconfigure.web.servlet.ServletWebServerFactoryAutoConfiguration;
import org.springframework.boot.web.embedded.tomcat.TomcatServletWebServerFactory;
import org.springframework.boot.web.server.WebServerFactoryCustomizer;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Import;

/**
 * Entry point of the fhirsvc HAPI FHIR JPA R4 test server.
 *
 * <p>Deliberately not {@code @SpringBootApplication}: HAPI's jars put Hibernate, Spring Data, Quartz,
 * Elasticsearch clients, Thymeleaf, springdoc etc. on the class path, and full auto-configuration would set up
 * its own data source, JPA repositories, a Quartz scheduler, Elasticsearch clients, an OpenAPI UI and more
 * around HAPI's beans: start-up time spent on things we do not use, and surprises. We import only the embedded
 * servlet container (plus placeholder resolution) and wire HAPI ourselves in {@link HapiJpaServerConfig}.
 */
@SpringBootConfiguration
@ImportAutoConfiguration({
	PropertyPlaceholderAutoConfiguration.class,
	ServletWebServerFactoryAutoConfiguration.class
})
@Import(HapiJpaServerConfig.class)
public class HapiTestServer {

	public static void main(String[] args) {
		TestServerOptions options;
		try {
			options = TestServerOptions.parse(args, System.getenv(), System.getProperties());
		} catch (TestServerOptions.UsageException e) {
			if (e.getMessage() != null) {
				System.err.println("error: " + e.getMessage());
			}
			System.err.println(TestServerOptions.USAGE);
			System.exit(e.getMessage() == null ? 0 : 2);
			return;
		}

		SpringApplication app = new SpringApplication(HapiTestServer.class);
		app.setBannerMode(Banner.Mode.OFF);
		Map<String, Object> props = new HashMap<>();
		props.put("server.port", options.port());
		// Loopback only by default: this is a test double with no real security.
		props.put("server.address", options.host());
		// Spring Boot 3.4 waits up to 30 s for in-flight requests on SIGTERM; a test server should just stop.
		props.put("server.shutdown", "immediate");
		// HAPI's JPA beans reference each other through field injection in cycles (search-param registry <->
		// resource-change listeners); Spring Boot refuses those unless told otherwise.
		props.put("spring.main.allow-circular-references", "true");
		// Spring Boot would otherwise read application.properties/yaml from the caller's working directory
		// (e.g. the repository root); all configuration comes from TestServerOptions instead.
		props.put("spring.config.location", "optional:classpath:/fhirsvc-testserver-none.properties");
		app.setDefaultProperties(props);
		app.addInitializers(ctx -> ctx.getBeanFactory().registerSingleton("testServerOptions", options));
		// Command-line args were consumed by TestServerOptions; Spring must not re-interpret them.
		app.run();
	}

	/**
	 * FHIR clients commonly send token searches unencoded ({@code code=http://loinc.org|4548-4}), and HAPI on Jetty
	 * (hapi.fhir.org) accepts that; Tomcat answers 400 unless the characters are allowed explicitly. (Spring
	 * Boot's server.tomcat.relaxed-* properties would need another auto-configuration we do not import.)
	 */
	@Bean
	public WebServerFactoryCustomizer<TomcatServletWebServerFactory> relaxedUrlCharacters() {
		return factory -> factory.addConnectorCustomizers(connector -> {
			connector.setProperty("relaxedQueryChars", "|{}[]^`\"<>");
			connector.setProperty("relaxedPathChars", "|{}[]^`\"<>");
		});
	}
}
