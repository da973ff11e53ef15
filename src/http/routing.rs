//! The configuration snapshot every request reads (the validated config, each route's topics
//! identity, each broker's bridge), and the swap a reload makes: one atomic pointer store, so a
//! request is served by the old snapshot or the new one, never a mix.

use super::Gateway;
use crate::config::Config;
use crate::hub::{Hub, RouteTopics};
use sluice_bridge::Bridge;
use std::sync::Arc;

/// One configuration as requests use it.
pub struct Routing {
    pub config: Config,
    /// What the topics of each route share, by route index (parallel to `config.routes`): a route a
    /// reload leaves unchanged keeps its `RouteTopics`, and with it its topics, rings and budget.
    pub routes: Vec<Arc<RouteTopics>>,
    /// The bridge of each configured broker, by index (parallel to `config.brokers`).
    pub bridges: Vec<Arc<dyn Bridge>>,
}

impl Routing {
    /// The routing of `config` on `bridges` (one per configured broker, in order). A route's topics
    /// come from `keep` (a reload's unchanged routes) or are made anew.
    pub fn new(
        config: Config,
        bridges: Vec<Arc<dyn Bridge>>,
        mut keep: impl FnMut(usize) -> Option<Arc<RouteTopics>>,
    ) -> Result<Self, &'static str> {
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, route)| match keep(index) {
                Some(kept) => Ok(kept),
                None => bridges
                    .get(route.broker)
                    .map(|bridge| Arc::new(RouteTopics::new(route, bridge.clone())))
                    // Validation checked every route's broker: only a bug gets here.
                    .ok_or("a route names a broker that has no bridge"),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            config,
            routes,
            bridges,
        })
    }
}

impl Gateway {
    /// The snapshot new requests read now.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing.load_full()
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Makes `routing` the snapshot new requests read, and gives what every stream and connection
    /// shares its `[server]` values: heartbeat, retry and write timeout (open streams included),
    /// the connection limits, `max_memory`, the idle timeout and `max_compressors`. Returns the
    /// snapshot it replaced.
    pub fn install(&self, routing: Arc<Routing>) -> Arc<Routing> {
        let server = &routing.config.server;
        self.pump_settings.heartbeat.set(server.heartbeat);
        self.pump_settings.retry.set(server.retry);
        self.pump_settings.write_timeout.set(server.write_timeout);
        self.limits
            .set(server.max_connections, server.max_connections_per_ip);
        self.memory.set_limit(server.max_memory);
        self.admission.set_rate(server.max_new_streams_per_second);
        self.connections.set_idle_timeout(server.request_timeout);
        crate::compress::encoder::set_max_active(server.max_compressors);
        self.routing.swap(routing)
    }
}
