package org.fhirsvc.testserver;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.IncomingRequestAddressStrategy;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.interceptor.LoggingInterceptor;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import jakarta.persistence.EntityManagerFactory;
import java.util.Properties;
import javax.sql.DataSource;
import org.apache.commons.dbcp2.BasicDataSource;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.boot.web.servlet.FilterRegistrationBean;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.core.Ordered;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

/**
 * HAPI FHIR JPA R4 wiring: storage settings, in-memory H2, the entity manager and the RESTful servlet.
 *
 * <p>What is imported, and why:
 * <ul>
 *   <li>JpaR4Config: the R4 FhirContext, a DAO and a resource provider for every R4 resource type, and (through
 *       JpaConfig) search, database-backed paging, transactions and conditional operations.
 *   <li>HapiJpaConfig: beans JpaConfig leaves to the application (paging provider, stale-search cleanup, a
 *       fulltext service that stays inactive without Hibernate Search).
 *   <li>ThreadPoolFactoryConfig: the executor for parallel batch-bundle entries, which JpaConfig expects.
 *   <li>JpaBatch2Config + Batch2JobsConfig: the batch2 job coordinator and job definitions. JPA services
 *       (system provider, terminology, delete-expunge) inject them even if no job ever runs.
 *   <li>SubscriptionChannelConfig: despite its name, only the in-JVM message broker (LinkedBlockingQueue
 *       channels) that batch2 hands out work through. Subscription matching and delivery are not imported.
 * </ul>
 * Not imported: subscriptions, MDM, CQL/CR, IPS, the web tester UI, Lucene/Elasticsearch. fhirsvc does not use
 * them and each one adds start-up time.
 */
@Configuration
@Import({
	JpaR4Config.class,
	HapiJpaConfig.class,
	ThreadPoolFactoryConfig.class,
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	SubscriptionChannelConfig.class
})
public class HapiJpaServerConfig {

	/** Same as the public hapi.fhir.org server, so paging code is exercised the same way. */
	static final int DEFAULT_PAGE_SIZE = 20;

	static final int MAX_PAGE_SIZE = 500;

	@Bean
	public JpaStorageSettings storageSettings(TestServerOptions options) {
		JpaStorageSettings s = new JpaStorageSettings();
		// off (null): every search runs afresh, so a poller sees a resource as soon as it is committed.
		// on: identical searches within 60 s return the cached result set, as on hapi.fhir.org.
		s.setReuseCachedSearchResultsForMillis(options.searchCache() ? TestServerOptions.SEARCH_CACHE_MILLIS : null);
		// PUT Patient/abc creates Patient/abc (purely numeric client ids stay reserved for the server, as on
		// hapi.fhir.org and in the starter project).
		s.setResourceClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum.ALPHANUMERIC);
		s.setAllowExternalReferences(true);
		s.setAllowMultipleDelete(true);
		// Lets a test wipe the database with $expunge instead of restarting the JVM.
		s.setExpungeEnabled(true);
		s.setDeleteExpungeEnabled(true);
		// No Lucene/Elasticsearch: plain SQL search only (this is also what hapi.fhir.org's _content/_text lacks).
		s.setAdvancedHSearchIndexing(false);
		s.setHibernateSearchIndexFullText(false);
		s.setHibernateSearchIndexSearchParams(false);
		// Default storage settings otherwise; in particular _lastUpdated, If-None-Exist, transactions and
		// database-backed paging are on by default.
		return s;
	}

	/** Partitioning stays off (a single default partition), but JPA beans need the settings object. */
	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	/** In-memory H2: nothing to clean up, nothing shared between two server processes. */
	@Bean(destroyMethod = "close")
	public BasicDataSource dataSource() {
		BasicDataSource ds = new BasicDataSource();
		ds.setDriverClassName(org.h2.Driver.class.getName());
		// A unique name per JVM is not needed (mem: databases are private to the process); DB_CLOSE_DELAY=-1
		// keeps the database while the pool has no open connection.
		ds.setUrl("jdbc:h2:mem:hapi;DB_CLOSE_DELAY=-1");
		ds.setUsername("sa");
		ds.setPassword("");
		ds.setMaxTotal(20);
		return ds;
	}

	@Primary
	@Bean
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory beanFactory,
			FhirContext fhirContext,
			JpaStorageSettings storageSettings,
			DataSource dataSource) {
		LocalContainerEntityManagerFactoryBean emf =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
		emf.setPersistenceUnitName("HAPI_PU");
		emf.setDataSource(dataSource);

		Properties jpa = new Properties();
		jpa.put("hibernate.dialect", HapiFhirH2Dialect.class.getName());
		// A fresh in-memory database on every start: Hibernate creates the tables from HAPI's entity classes (as
		// the starter project does for H2); HAPI's SQL migrator is only needed for long-lived databases.
		jpa.put("hibernate.hbm2ddl.auto", "update");
		// Hibernate Search (Lucene/Elasticsearch) is on the class path via HAPI but must stay switched off.
		jpa.put("hibernate.search.enabled", "false");
		jpa.put("hibernate.format_sql", "false");
		jpa.put("hibernate.show_sql", "false");
		jpa.put("hibernate.jdbc.batch_size", "20");
		jpa.put("hibernate.cache.use_query_cache", "false");
		jpa.put("hibernate.cache.use_second_level_cache", "false");
		jpa.put("hibernate.cache.use_structured_entries", "false");
		jpa.put("hibernate.cache.use_minimal_puts", "false");
		emf.setJpaProperties(jpa);
		return emf;
	}

	@Primary
	@Bean
	public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
		JpaTransactionManager tm = new JpaTransactionManager();
		tm.setEntityManagerFactory(entityManagerFactory);
		return tm;
	}

	@Bean
	public RestfulServer fhirRestfulServer(
			FhirContext fhirContext,
			IFhirSystemDao<?, ?> systemDao,
			ResourceProviderFactory resourceProviderFactory,
			IJpaSystemProvider systemProvider,
			DatabaseBackedPagingProvider pagingProvider,
			JpaStorageSettings storageSettings,
			ISearchParamRegistry searchParamRegistry,
			IValidationSupport validationSupport) {
		RestfulServer server = new RestfulServer(fhirContext);

		// One provider per R4 resource type (read, vread, search, create/update/delete incl. conditional).
		server.registerProviders(resourceProviderFactory.createProviders());
		// Server-level operations: transaction/batch bundles, history, $expunge, ...
		server.registerProvider(systemProvider);

		pagingProvider.setDefaultPageSize(DEFAULT_PAGE_SIZE);
		pagingProvider.setMaximumPageSize(MAX_PAGE_SIZE);
		server.setPagingProvider(pagingProvider);

		JpaCapabilityStatementProvider capability = new JpaCapabilityStatementProvider(
				server, systemDao, storageSettings, searchParamRegistry, validationSupport);
		capability.setImplementationDescription("fhirsvc HAPI FHIR JPA R4 test server");
		// Counting every table would make each GET /metadata (our readiness probe) slower as data grows.
		capability.setIncludeResourceCounts(false);
		server.setServerConformanceProvider(capability);

		server.setDefaultResponseEncoding(EncodingEnum.JSON);
		// One log line per request (to stderr via logback): the first thing to read when an integration test
		// fails.
		LoggingInterceptor requestLog = new LoggingInterceptor();
		requestLog.setLoggerName("fhirsvc.hapi.requests");
		requestLog.setMessageFormat(
				"${requestVerb} ${requestUrl}${requestParameters} ${operationType} (${processingTimeMillis} ms)");
		requestLog.setErrorMessageFormat(
				"${requestVerb} ${requestUrl}${requestParameters} failed: ${exceptionMessage}");
		requestLog.setLogExceptions(true);
		server.registerInterceptor(requestLog);
		// Links (paging next/self, Location) are built from the request, so they match the port and the base
		// path (open or secure) the client actually used.
		server.setServerAddressStrategy(new IncomingRequestAddressStrategy());
		return server;
	}

	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServletRegistration(
			RestfulServer server, TestServerOptions options) {
		ServletRegistrationBean<RestfulServer> reg = new ServletRegistrationBean<>(server);
		reg.setName("fhir");
		for (String path : options.allBasePaths()) {
			// One servlet, possibly two mappings: the secure mapping serves the same store behind the token.
			reg.addUrlMappings(path + "/*");
		}
		// Initialise HAPI's servlet (provider scanning) during start-up rather than on the first request, so
		// "ready" really means ready.
		reg.setLoadOnStartup(1);
		return reg;
	}

	@Bean
	public FilterRegistrationBean<BearerTokenFilter> bearerTokenFilter(TestServerOptions options) {
		FilterRegistrationBean<BearerTokenFilter> reg =
				new FilterRegistrationBean<>(new BearerTokenFilter(options.token(), options.tokenGuardedPaths()));
		reg.addUrlPatterns("/*");
		reg.setOrder(Ordered.HIGHEST_PRECEDENCE);
		// Without a token the filter would only pass everything through; don't install it at all.
		reg.setEnabled(options.tokenRequired());
		return reg;
	}
}
