//! A client of Garden, the Diego cell's container API: plain HTTP/1.1 on its unix socket (or
//! TCP), JSON with Go's field names. Only the four calls a collector needs: `ping`, `list`,
//! `bulk_info` and `bulk_metrics`.
//!
//! Wire facts (cloudfoundry/garden `routes/routes.go`, `server/request_handling.go`,
//! `container.go`, `errors.go`): keys are Go field names (`Handles`, `State`, `Properties`);
//! nil slices come as `null`; the bulk calls must always carry `handles=` (a request without it
//! makes the server's handler panic and drop the connection); a failure about one container
//! comes in its entry's `Err`, a failure of the call as a non-2xx status with an error object.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Handles asked per bulk request (the server has no limit; this keeps URLs short).
const BULK_CHUNK: usize = 200;
/// The largest body read from Garden (a `bulk_info` of 200 containers is well under 1 MiB).
pub const MAX_BODY: usize = 64 << 20;

/// Where Garden listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A unix socket.
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp(host) => write!(f, "tcp:{host}"),
        }
    }
}

/// What went wrong talking to Garden.
#[derive(Debug, thiserror::Error)]
pub enum GardenError {
    /// No answer (refused, timed out, cut).
    #[error("no answer: {0}")]
    Unreachable(String),
    /// An answer with an error status, and what Garden said.
    #[error("status {0}: {1}")]
    Status(u16, String),
    /// An answer that does not parse.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

/// Garden's error object (`errors.go`): a type (`ContainerNotFoundError`, `""` …) and a message.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ErrorObject {
    /// The error's type.
    #[serde(rename = "Type")]
    pub kind: String,
    /// What happened.
    #[serde(rename = "Message")]
    pub message: String,
}

/// A port mapping (`garden.PortMapping`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct PortMapping {
    /// The cell's port.
    #[serde(rename = "HostPort")]
    pub host_port: u32,
    /// The container's port.
    #[serde(rename = "ContainerPort")]
    pub container_port: u32,
}

/// What Garden says of one container (`garden.ContainerInfo`); fields the collector does not use
/// are not read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ContainerInfo {
    /// `active` or `stopped`.
    #[serde(rename = "State")]
    pub state: String,
    /// The cell's address.
    #[serde(rename = "ExternalIP")]
    pub external_ip: String,
    /// The container's overlay address (where the app listens).
    #[serde(rename = "ContainerIP")]
    pub container_ip: String,
    /// Every property: `network.*`, `log_config`, `executor:owner`, `garden.*` …
    #[serde(rename = "Properties", deserialize_with = "null_as_default")]
    pub properties: HashMap<String, String>,
    /// Published ports.
    #[serde(rename = "MappedPorts", deserialize_with = "null_as_default")]
    pub mapped_ports: Vec<PortMapping>,
}

/// Metrics of one container; only its age is read.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Metrics {
    /// Time since it was created, in nanoseconds (`time.Duration`).
    #[serde(rename = "Age")]
    pub age: i64,
}

/// One entry of a bulk answer: a value, or the error about that container.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Entry<T> {
    /// The container's info (`bulk_info`).
    #[serde(rename = "Info", alias = "Metrics")]
    pub value: T,
    /// Set when this container could not be read.
    #[serde(rename = "Err")]
    pub error: Option<ErrorObject>,
}

fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// A Garden client.
#[derive(Clone, Debug)]
pub struct Garden {
    client: reqwest::Client,
    base: String,
    address: Address,
}

impl Garden {
    /// A client of `address`, each request bounded by `timeout`. No I/O.
    pub fn new(address: Address, timeout: Duration) -> Result<Self, GardenError> {
        // A new connection per request, as Garden's own client does (`DisableKeepAlives`): a
        // restarted Garden is never talked to through a connection of the old one.
        let builder = reqwest::Client::builder().timeout(timeout).no_proxy().http1_only().pool_max_idle_per_host(0);
        let (builder, base) = match &address {
            // Garden's own client sends `Host: api`.
            Address::Unix(path) => (builder.unix_socket(path.as_path()), "http://api".to_owned()),
            Address::Tcp(host) => (builder, format!("http://{host}")),
        };
        let client = builder.build().map_err(|e| GardenError::Unreachable(e.to_string()))?;
        Ok(Self { client, base, address })
    }

    /// Where it talks.
    pub fn address(&self) -> &Address {
        &self.address
    }

    async fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, GardenError> {
        let url = format!("{}{path_and_query}", self.base);
        let mut response = self.client.get(&url).send().await.map_err(|e| GardenError::Unreachable(chain(&e)))?;
        let status = response.status();
        let too_large = |e: wm_core::BodyTooLarge| GardenError::Malformed(format!("{path_and_query}: {e}"));
        let mut body = wm_core::CappedBody::new(MAX_BODY, response.content_length()).map_err(too_large)?;
        while let Some(chunk) = response.chunk().await.map_err(|e| GardenError::Unreachable(chain(&e)))? {
            body.push(&chunk).map_err(too_large)?;
        }
        let body = body.into_bytes();
        if !status.is_success() {
            let said = serde_json::from_slice::<ErrorObject>(&body)
                .map(|e| if e.kind.is_empty() { e.message } else { format!("{}: {}", e.kind, e.message) })
                .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
            return Err(GardenError::Status(status.as_u16(), said));
        }
        serde_json::from_slice(&body).map_err(|e| GardenError::Malformed(format!("{path_and_query}: {e}")))
    }

    /// `GET /ping`.
    pub async fn ping(&self) -> Result<(), GardenError> {
        self.get::<serde_json::Value>("/ping").await.map(drop)
    }

    /// `GET /containers`: every container's handle (Garden lists only created ones).
    pub async fn list(&self) -> Result<Vec<String>, GardenError> {
        #[derive(Deserialize)]
        struct List {
            // The server writes `Handles`; the API doc says `handles`.
            #[serde(rename = "Handles", alias = "handles", default, deserialize_with = "null_as_default")]
            handles: Vec<String>,
        }
        Ok(self.get::<List>("/containers").await?.handles)
    }

    /// `GET /containers/bulk_info?handles=…`, in chunks.
    pub async fn bulk_info(&self, handles: &[String]) -> Result<HashMap<String, Entry<ContainerInfo>>, GardenError> {
        self.bulk("bulk_info", handles).await
    }

    /// `GET /containers/bulk_metrics?handles=…`, in chunks.
    pub async fn bulk_metrics(&self, handles: &[String]) -> Result<HashMap<String, Entry<Metrics>>, GardenError> {
        self.bulk("bulk_metrics", handles).await
    }

    async fn bulk<T: DeserializeOwned + Default>(
        &self,
        call: &str,
        handles: &[String],
    ) -> Result<HashMap<String, Entry<T>>, GardenError> {
        let mut all = HashMap::with_capacity(handles.len());
        // Handles go in the query as they are: Garden splits on `,` and its handles are GUIDs;
        // one that would need escaping is not asked for (and so not listed).
        let safe: Vec<&String> = handles.iter().filter(|h| is_query_safe(h)).collect();
        for chunk in safe.chunks(BULK_CHUNK) {
            let joined = chunk.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(",");
            all.extend(self.get::<HashMap<String, Entry<T>>>(&format!("/containers/{call}?handles={joined}")).await?);
        }
        Ok(all)
    }
}

/// Whether a handle can go in a query string as it is.
pub fn is_query_safe(handle: &str) -> bool {
    !handle.is_empty() && handle.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An error and its causes, one line.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_info_entries_parse_with_go_nulls_and_errors() {
        let body = br#"{"a":{"Info":{"State":"active","Events":null,"HostIP":"10.0.0.1","ContainerIP":"10.255.0.2",
            "ExternalIP":"10.0.16.21","ContainerPath":"/x","ProcessIDs":null,"Properties":{"k":"v"},
            "MappedPorts":[{"HostPort":61012,"ContainerPort":8080}]},"Err":null},
            "b":{"Info":{"State":"","Properties":null,"MappedPorts":null},"Err":{"Type":"","Message":"boom"}}}"#;
        let parsed: HashMap<String, Entry<ContainerInfo>> = serde_json::from_slice(body).unwrap();
        assert_eq!(parsed["a"].value.state, "active");
        assert_eq!(parsed["a"].value.mapped_ports, [PortMapping { host_port: 61012, container_port: 8080 }]);
        assert_eq!(parsed["a"].value.properties["k"], "v");
        assert!(parsed["a"].error.is_none());
        assert_eq!(parsed["b"].error.as_ref().map(|e| e.message.as_str()), Some("boom"));
        assert!(parsed["b"].value.properties.is_empty());
    }

    #[test]
    fn metrics_entries_read_the_age() {
        let body = br#"{"h":{"Metrics":{"CPUStat":{"Usage":1},"NetworkStat":null,"Age":123456789000},"Err":null}}"#;
        let parsed: HashMap<String, Entry<Metrics>> = serde_json::from_slice(body).unwrap();
        assert_eq!(parsed["h"].value.age, 123_456_789_000);
    }

    #[test]
    fn only_plain_handles_go_in_a_query() {
        assert!(is_query_safe("e49f448e-54d2-4c33-61a3-5335"));
        assert!(!is_query_safe("a,b") && !is_query_safe("a&b=c") && !is_query_safe(""));
    }
}
