package org.fhirsvc.testserver;

import java.util.HashMap;
import java.util.Map;
import org.springframework.boot.Banner;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.SpringBootConfiguration;
import org.springframework.boot.autoconfigure.ImportAutoConfiguration;
import org.springframework.boot.autoconfigure.context.PropertyPlaceholderAutoConfiguration;
import org.springframework.boot.autoconfigure.web.servlet.ServletWebServerFactoryAutoConfiguration;
import org.springframework.context.annotation.Import;

/**
 * Entry point of the fhirsvc HAPI FHIR JPA R4 test server.
 *
 * <p>Deliberately not {@code @SpringBootApplication}: HAPI's jars put Hibernate, Spring Data, Quartz,
 * Elasticsearch clients, Thymeleaf, springdoc etc. on the class path, and full auto-configuration would build
 * a second entity manager, a Quartz scheduler, an OpenAPI UI and more that we neither need nor want to wait
 * for. We import only the embedded servlet container (plus placeholder resolution) and wire HAPI ourselves in
 * {@link HapiJpaServerConfig}.
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
		// Nothing to gain from JMX here; it only costs start-up time.
		app.setRegisterShutdownHook(true);
		Map<String, Object> props = new HashMap<>();
		props.put("server.port", options.port());
		props.put("server.address", options.host());
		props.put("spring.jmx.enabled", "false");
		// HAPI's JPA beans reference each other through field injection in cycles (search-param registry <->
		// resource-change listeners); Spring Boot refuses those unless told otherwise.
		props.put("spring.main.allow-circular-references", "true");
		// Do not let a stray application.properties on the class path of a caller change behaviour.
		props.put("spring.config.location", "optional:classpath:/fhirsvc-testserver-none.properties");
		// The same behaviour the starter's pom enables, so ctrl-C / SIGTERM stops Tomcat before the JPA context.
		props.put("server.shutdown", "immediate");
		app.setDefaultProperties(props);
		app.addInitializers(ctx -> ctx.getBeanFactory().registerSingleton("testServerOptions", options));
		// Command-line args were consumed by TestServerOptions; Spring must not re-interpret them.
		app.run();
	}
}
