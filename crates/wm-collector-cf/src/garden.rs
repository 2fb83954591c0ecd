//! A client of Garden, the Diego cell's container API: plain HTTP/1.1 on its unix socket (or on
//! TCP), with JSON bodies. It makes only the four calls the collector needs: `ping`, `list`,
//! `bulk_info` and `bulk_metrics`.
//!
//! How Garden's wire format behaves (cloudfoundry/garden `routes/routes.go`,
//! `server/request_handling.go`, `container.go`, `errors.go`):
//! - keys are Go field names (`Handles`, `State`, `Properties`);
//! - a nil Go slice or map comes as `null`;
//! - the bulk calls must always carry `handles=`: a request without it makes the server's
//!   handler panic and drop the connection;
//! - a failure about one container comes in its entry's `Err`; a failure of the whole call comes
//!   as a non-2xx status with an error object.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The most handles asked about in one bulk request. The server has no limit; this keeps URLs
/// short.
const BULK_CHUNK: usize = 200;
/// The largest body read from Garden; a larger one fails the request. A `bulk_info` answer about
/// 200 containers is well under 1 MiB.
pub const MAX_BODY: usize = 64 << 20;

/// Where Garden listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP address, as `host:port`.
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
    /// No complete answer: the connection was refused, timed out or cut. Also returned when the
    /// client cannot be built.
    #[error("no answer: {0}")]
    Unreachable(String),
    /// An answer with an error status: the status, and Garden's error message (or the start of
    /// the body when it is not an error object).
    #[error("status {0}: {1}")]
    Status(u16, String),
    /// An answer that does not parse, or whose body is larger than [`MAX_BODY`].
    #[error("malformed answer: {0}")]
    Malformed(String),
}

/// Garden's error object (`errors.go`): a type (`ContainerNotFoundError`, or empty, among others)
/// and a message.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ErrorObject {
    /// The error's type; may be empty.
    #[serde(rename = "Type")]
    pub kind: String,
    /// The error's message.
    #[serde(rename = "Message")]
    pub message: String,
}

/// A port mapping (`garden.PortMapping`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct PortMapping {
    /// The port on the cell.
    #[serde(rename = "HostPort")]
    pub host_port: u32,
    /// The port inside the container.
    #[serde(rename = "ContainerPort")]
    pub container_port: u32,
}

/// What Garden reports about one container (`garden.ContainerInfo`); the fields the collector
/// does not use are not read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ContainerInfo {
    /// The container's state: `active` or `stopped`.
    #[serde(rename = "State")]
    pub state: String,
    /// The cell's IP address.
    #[serde(rename = "ExternalIP")]
    pub external_ip: String,
    /// The container's IP address on the overlay network (where the app listens).
    #[serde(rename = "ContainerIP")]
    pub container_ip: String,
    /// All the container's properties, such as `network.*`, `log_config`, `executor:owner` and
    /// `garden.*`; empty when Garden sends `null`.
    #[serde(rename = "Properties", deserialize_with = "null_as_default")]
    pub properties: HashMap<String, String>,
    /// The ports published on the cell; empty when Garden sends `null`.
    #[serde(rename = "MappedPorts", deserialize_with = "null_as_default")]
    pub mapped_ports: Vec<PortMapping>,
}

/// The metrics of one container; only its age is read.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Metrics {
    /// The time since the container was created, in nanoseconds (Go's `time.Duration`).
    #[serde(rename = "Age")]
    pub age: i64,
}

/// One entry of a bulk answer: the value about one container, or the error Garden met reading
/// it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Entry<T> {
    /// The container's info (`Info`, from `bulk_info`) or metrics (`Metrics`, from
    /// `bulk_metrics`); empty or partly filled when Garden sent an error instead.
    #[serde(rename = "Info", alias = "Metrics")]
    pub value: T,
    /// Set when Garden could not read this container.
    #[serde(rename = "Err")]
    pub error: Option<ErrorObject>,
}

/// Deserializes a value that Go may send as `null` (a nil slice or map), reading `null` as the
/// type's default.
fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// A client of one Garden server. Cloning it is cheap and shares the HTTP client.
#[derive(Clone, Debug)]
pub struct Garden {
    client: reqwest::Client,
    base: String,
    address: Address,
}

impl Garden {
    /// Creates a client of `address` whose every request must finish within `timeout`. Does no
    /// I/O.
    ///
    /// # Errors
    ///
    /// Returns [`GardenError::Unreachable`] when the HTTP client cannot be built.
    pub fn new(address: Address, timeout: Duration) -> Result<Self, GardenError> {
        // A new connection per request, as Garden's own client does (`DisableKeepAlives`), so
        // that a request never goes over a connection opened to a Garden that has since
        // restarted.
        let builder = reqwest::Client::builder().timeout(timeout).no_proxy().http1_only().pool_max_idle_per_host(0);
        let (builder, base) = match &address {
            // Over a unix socket the host in the URL is only a name; `api` is the one Garden's own
            // client sends in its `Host` header.
            Address::Unix(path) => (builder.unix_socket(path.as_path()), "http://api".to_owned()),
            Address::Tcp(host) => (builder, format!("http://{host}")),
        };
        let client = builder.build().map_err(|e| GardenError::Unreachable(e.to_string()))?;
        Ok(Self { client, base, address })
    }

    /// Returns the address of the Garden server.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Sends `GET path_and_query` and decodes the JSON body, read up to [`MAX_BODY`].
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

    /// Sends `GET /ping`, to check that Garden answers.
    ///
    /// # Errors
    ///
    /// Returns an error when Garden does not answer, answers with an error status, or answers
    /// something that is not JSON.
    pub async fn ping(&self) -> Result<(), GardenError> {
        self.get::<serde_json::Value>("/ping").await.map(drop)
    }

    /// Sends `GET /containers` and returns the handle of every container Garden lists (only
    /// containers whose creation has completed).
    ///
    /// # Errors
    ///
    /// Returns an error when Garden does not answer, answers with an error status, or answers
    /// something that does not parse.
    pub async fn list(&self) -> Result<Vec<String>, GardenError> {
        #[derive(Deserialize)]
        struct List {
            // The server writes `Handles`, while the API doc says `handles`: accept both.
            #[serde(rename = "Handles", alias = "handles", default, deserialize_with = "null_as_default")]
            handles: Vec<String>,
        }
        Ok(self.get::<List>("/containers").await?.handles)
    }

    /// Sends `GET /containers/bulk_info?handles=…` and returns each container's info, by handle.
    ///
    /// The handles are asked about in chunks of 200; a handle that cannot go in a query as it is
    /// ([`is_query_safe`]) is not asked about, so it is missing from the answer.
    ///
    /// # Errors
    ///
    /// Returns the error of the first chunk that fails: Garden does not answer, answers with an
    /// error status, or answers something that does not parse. An error about one container is
    /// not a failure: it comes in that container's entry.
    pub async fn bulk_info(&self, handles: &[String]) -> Result<HashMap<String, Entry<ContainerInfo>>, GardenError> {
        self.bulk("bulk_info", handles).await
    }

    /// Sends `GET /containers/bulk_metrics?handles=…` and returns each container's metrics, by
    /// handle.
    ///
    /// Chunks and skipped handles as for [`bulk_info`](Self::bulk_info).
    ///
    /// # Errors
    ///
    /// As for [`bulk_info`](Self::bulk_info).
    pub async fn bulk_metrics(&self, handles: &[String]) -> Result<HashMap<String, Entry<Metrics>>, GardenError> {
        self.bulk("bulk_metrics", handles).await
    }

    /// Asks `call` about the handles, in chunks of `BULK_CHUNK`, and merges the answers.
    async fn bulk<T: DeserializeOwned + Default>(
        &self,
        call: &str,
        handles: &[String],
    ) -> Result<HashMap<String, Entry<T>>, GardenError> {
        let mut all = HashMap::with_capacity(handles.len());
        // Handles go in the query as they are, joined by `,`, which Garden splits on; its handles
        // are GUIDs. A handle that would need escaping is not asked about, and so does not appear
        // in the answer.
        let safe: Vec<&String> = handles.iter().filter(|h| is_query_safe(h)).collect();
        for chunk in safe.chunks(BULK_CHUNK) {
            let joined = chunk.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(",");
            all.extend(self.get::<HashMap<String, Entry<T>>>(&format!("/containers/{call}?handles={joined}")).await?);
        }
        Ok(all)
    }
}

/// Tells whether a handle can go in a query string as it is: not empty, and only ASCII letters,
/// digits, `-`, `_` and `.`.
pub fn is_query_safe(handle: &str) -> bool {
    !handle.is_empty() && handle.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Returns an error and its chain of causes on one line, separated by `: `.
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
