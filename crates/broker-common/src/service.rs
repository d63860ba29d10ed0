//! The services a broker process can run.

use std::fmt;
use std::str::FromStr;

/// One broker service. A process runs one or more of them; the all-in-one
/// `broker` binary takes a repeatable `--service` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    IngestGateway,
    ShardRouter,
    StorageWriter,
    QueryApi,
    ClusterCtl,
    HostManager,
}

impl Service {
    /// Every service that exists today, in data-path order.
    pub const ALL: [Service; 6] = [
        Service::IngestGateway,
        Service::ShardRouter,
        Service::StorageWriter,
        Service::QueryApi,
        Service::ClusterCtl,
        Service::HostManager,
    ];

    /// What `broker run` starts when no `--service` is given: the data
    /// path and query-api. cluster-ctl runs only when named (it is 3 or 5
    /// raft nodes, each with its own data directory; `broker up` starts
    /// three).
    pub const DEFAULT: [Service; 4] = [
        Service::IngestGateway,
        Service::ShardRouter,
        Service::StorageWriter,
        Service::QueryApi,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::IngestGateway => "ingest-gateway",
            Service::ShardRouter => "shard-router",
            Service::StorageWriter => "storage-writer",
            Service::QueryApi => "query-api",
            Service::ClusterCtl => "cluster-ctl",
            Service::HostManager => "host-manager",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown service {0:?}, valid services are: ingest-gateway, shard-router, storage-writer, query-api, cluster-ctl, host-manager"
)]
pub struct UnknownService(pub String);

impl FromStr for Service {
    type Err = UnknownService;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Service::ALL
            .into_iter()
            .find(|svc| svc.as_str() == s)
            .ok_or_else(|| UnknownService(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_lists_valid_names() {
        for svc in Service::ALL {
            assert_eq!(svc.as_str().parse::<Service>(), Ok(svc));
        }
        let err = "router".parse::<Service>().unwrap_err().to_string();
        assert!(err.contains("\"router\""), "{err}");
        assert!(err.contains("shard-router"), "{err}");
    }
}
