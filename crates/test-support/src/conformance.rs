//! Loads and runs the conformance scenarios (format: `testdata/conformance/README.md`).
//!
//! Entities in the files are written in the model's own serialized form, so the runner reads
//! them with the model's deserializer: a misspelt field fails the run instead of being ignored.
//! A `MATCH_ENTITY` is compared field by field after both sides went through the model and
//! empty values (null, "", false, [], {}) were dropped, so `running: false` equals "no state".

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};
use wm_core::{
    CollectorEvent, Entity, EntityId, EventType, EventTypeFilter, Filter, Kind, Source, StoreReader, SubscriberPriority,
};
use wm_store::{Store, Subscription, TryRecv};

/// Longest wait for an expected bundle: past it the step fails instead of hanging.
const RECV_BOUND: Duration = Duration::from_secs(10);

/// One scenario of a file.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// What it pins down.
    pub name: String,
    /// Tagger config keys (tagger files only).
    pub config: Value,
    /// The steps, in order.
    pub steps: Vec<Value>,
}

impl Scenario {
    /// Whether any step needs the tagger.
    pub fn needs_tagger(&self) -> bool {
        const TAGGER_STEPS: [&str; 6] =
            ["events", "expect_tags", "expect_tags_include", "expect_tags_exclude", "expect_unknown", "advance"];
        self.steps.iter().any(|s| s.as_object().is_some_and(|m| TAGGER_STEPS.iter().any(|k| m.contains_key(*k))))
    }
}

/// A scenario file.
#[derive(Debug, Clone)]
pub struct ScenarioFile {
    /// Its path.
    pub path: PathBuf,
    /// Its scenarios.
    pub scenarios: Vec<Scenario>,
}

impl ScenarioFile {
    /// The file name, for messages.
    pub fn file_name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// The directories to run: the project's copy `testdata/conformance`, its own
/// `testdata/conformance-ours`, and `$WM_EXTRA_CONFORMANCE`.
pub fn directories() -> Result<Vec<PathBuf>, String> {
    let own = crate::testdata::path("conformance");
    if !own.is_dir() {
        return Err(format!("conformance directory {} not found", own.display()));
    }
    let mut dirs = vec![own];
    // The project's own scenarios, in the same format, for what the shared ones do not pin down.
    let ours = crate::testdata::path("conformance-ours");
    if ours.is_dir() {
        dirs.push(ours);
    }
    if let Some(extra) = std::env::var_os("WM_EXTRA_CONFORMANCE").filter(|v| !v.is_empty()) {
        let extra = PathBuf::from(extra);
        if !extra.is_dir() {
            return Err(format!("WM_EXTRA_CONFORMANCE={} is not a directory", extra.display()));
        }
        dirs.push(extra);
    }
    Ok(dirs)
}

/// Every `*.yaml` file of `dir`, parsed, in name order. A file that does not parse is an error.
pub fn load_dir(dir: &Path) -> Result<Vec<ScenarioFile>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    paths.into_iter().map(|p| load_file(&p)).collect()
}

/// Parses one file.
pub fn load_file(path: &Path) -> Result<ScenarioFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    // YAML 1.2 scalars: `name: y` is the string "y", not YAML 1.1's boolean.
    let options = serde_saphyr::options!(strict_booleans: true);
    let doc: Value = serde_saphyr::from_str_with_options(&text, options)
        .map_err(|e| format!("{}: not valid YAML: {e}", path.display()))?;
    let Value::Array(items) = doc else {
        return Err(format!("{}: expected a list of scenarios", path.display()));
    };
    let mut scenarios = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(mut m) = item else {
            return Err(format!("{}: scenario {i} is not a map", path.display()));
        };
        let name = match m.remove("name") {
            Some(Value::String(n)) => n,
            _ => return Err(format!("{}: scenario {i} has no name", path.display())),
        };
        let steps = match m.remove("steps") {
            Some(Value::Array(s)) => s,
            _ => return Err(format!("{}: scenario {name:?} has no steps list", path.display())),
        };
        let config = m.remove("config").unwrap_or(Value::Null);
        if let Some(key) = m.keys().next() {
            return Err(format!("{}: scenario {name:?} has an unknown key {key:?}", path.display()));
        }
        scenarios.push(Scenario { name, config, steps });
    }
    Ok(ScenarioFile { path: path.to_owned(), scenarios })
}

/// Drops empty values recursively, so that "left out" and "empty" compare equal.
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().map(|(k, v)| (k.clone(), normalize(v))).filter(|(_, v)| !is_empty(v)).collect::<Map<_, _>>(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Number(_) | Value::Bool(true) => false,
    }
}

/// Reads an entity written in the files' form.
pub fn parse_entity(v: &Value) -> Result<Entity, String> {
    serde_json::from_value(v.clone()).map_err(|e| format!("entity {v}: {e}"))
}

fn to_value(e: &Entity) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

/// Checks `received` against a `MATCH_ENTITY`: kind and id, every listed field, and `absent`.
pub fn match_entity(expected: &Value, received: &Entity) -> Result<(), String> {
    let Value::Object(fields) = expected else { return Err(format!("MATCH_ENTITY {expected} is not a map")) };
    let mut fields = fields.clone();
    let absent = match fields.remove("absent") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        Some(other) => return Err(format!("absent must be a list, not {other}")),
    };
    let expected_entity = parse_entity(&Value::Object(fields.clone()))?;
    let want = normalize(&to_value(&expected_entity));
    let got = normalize(&to_value(received));
    let mut problems = String::new();
    for key in fields.keys() {
        let w = want.get(key).unwrap_or(&Value::Null);
        let g = got.get(key).unwrap_or(&Value::Null);
        if w != g {
            let _ = write!(problems, "{key}: expected {w}, got {g}; ");
        }
    }
    for key in &absent {
        if let Some(g) = got.get(key) {
            let _ = write!(problems, "{key}: expected absent, got {g}; ");
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(format!("{problems}entity was {got}")) }
}

fn parse_event(v: &Value) -> Result<CollectorEvent, String> {
    let event_type = match v.get("type").and_then(Value::as_str) {
        Some("set") => EventType::Set,
        Some("unset") => EventType::Unset,
        other => return Err(format!("event type {other:?} is neither set nor unset")),
    };
    let source = parse_source(v.get("source"))?;
    let entity = parse_entity(v.get("entity").ok_or("event without entity")?)?;
    Ok(CollectorEvent { event_type, source, entity })
}

fn parse_source(v: Option<&Value>) -> Result<Source, String> {
    let name = v.and_then(Value::as_str).ok_or("missing source")?;
    Source::parse(name).ok_or_else(|| format!("unknown source {name:?}"))
}

fn parse_kind(v: Option<&Value>) -> Result<Kind, String> {
    let name = v.and_then(Value::as_str).ok_or("missing kind")?;
    Kind::parse(name).ok_or_else(|| format!("unknown kind {name:?}"))
}

fn parse_events(v: &Value) -> Result<Vec<CollectorEvent>, String> {
    v.as_array().ok_or("a list of events")?.iter().map(parse_event).collect()
}

/// Builds a `where` predicate: every listed field equals the entity's (after normalization).
fn predicate(
    kind: Kind,
    fields: &Map<String, Value>,
) -> Result<impl Fn(&Entity) -> bool + Send + Sync + 'static, String> {
    let mut probe = fields.clone();
    probe.insert("kind".into(), Value::String(kind.as_str().into()));
    probe.insert("id".into(), Value::String(String::new()));
    let want = normalize(&to_value(&parse_entity(&Value::Object(probe))?));
    let keys: Vec<String> = fields.keys().cloned().collect();
    Ok(move |e: &Entity| {
        let got = normalize(&to_value(e));
        keys.iter().all(|k| want.get(k) == got.get(k))
    })
}

/// Reads a `FILTER`.
pub fn parse_filter(v: Option<&Value>) -> Result<Filter, String> {
    let mut filter = Filter::all();
    let Some(v) = v else { return Ok(filter) };
    let m = v.as_object().ok_or("filter must be a map")?;
    for key in m.keys() {
        if !["kinds", "source", "event_type", "where"].contains(&key.as_str()) {
            return Err(format!("unknown filter key {key:?}"));
        }
    }
    let where_fields = match m.get("where") {
        None => None,
        Some(Value::Object(w)) => Some(w),
        Some(other) => return Err(format!("where must be a map, not {other}")),
    };
    let kinds: Vec<Kind> = match m.get("kinds") {
        Some(Value::Array(ks)) => ks.iter().map(|k| parse_kind(Some(k))).collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("kinds must be a list, not {other}")),
        None if where_fields.is_some() => Kind::ALL.to_vec(),
        None => Vec::new(),
    };
    for kind in kinds {
        filter = match where_fields {
            // A field another kind does not have makes that kind match nothing.
            Some(w) => match predicate(kind, w) {
                Ok(p) => filter.with_kind_where(kind, p),
                Err(_) => filter.with_kind_where(kind, |_| false),
            },
            None => filter.with_kind(kind),
        };
    }
    if let Some(s) = m.get("source") {
        filter = filter.with_source(parse_source(Some(s))?);
    }
    filter = filter.with_event_type(match m.get("event_type").and_then(Value::as_str) {
        None | Some("all") => EventTypeFilter::All,
        Some("set") => EventTypeFilter::Set,
        Some("unset") => EventTypeFilter::Unset,
        Some(other) => return Err(format!("unknown event_type {other:?}")),
    });
    Ok(filter)
}

fn parse_priority(v: Option<&Value>) -> Result<SubscriberPriority, String> {
    match v.and_then(Value::as_str) {
        Some("tagger") => Ok(SubscriberPriority::Tagger),
        Some("config_provider") => Ok(SubscriberPriority::ConfigProvider),
        Some("normal") | None => Ok(SubscriberPriority::Normal),
        Some(other) => Err(format!("unknown priority {other:?}")),
    }
}

/// Runs store scenarios against a fresh [`Store`] each.
#[derive(Debug, Default)]
pub struct StoreRunner {
    subscribers: Vec<(String, Subscription)>,
}

impl StoreRunner {
    /// Runs one scenario; the error names the step and what differed.
    pub async fn run(scenario: &Scenario) -> Result<(), String> {
        let store = Store::new();
        let mut runner = StoreRunner::default();
        for (i, step) in scenario.steps.iter().enumerate() {
            let label = step_verb(step);
            runner.step(&store, step).await.map_err(|e| format!("step {} ({label}): {e}", i + 1))?;
        }
        store.shutdown().await;
        Ok(())
    }

    fn subscriber(&mut self, name: &str) -> Result<&mut Subscription, String> {
        self.subscribers
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| format!("no subscriber named {name:?}"))
    }

    async fn step(&mut self, store: &Store, step: &Value) -> Result<(), String> {
        let m = step.as_object().ok_or("a step must be a map")?;
        if let Some(events) = m.get("notify") {
            store.notify(parse_events(events)?).await;
        } else if let Some(reset) = m.get("reset") {
            let source = parse_source(reset.get("source"))?;
            let entities = match reset.get("entities") {
                Some(Value::Array(es)) => es.iter().map(parse_entity).collect::<Result<_, _>>()?,
                None | Some(Value::Null) => Vec::new(),
                Some(other) => return Err(format!("entities must be a list, not {other}")),
            };
            store.reset(source, entities).await;
        } else if let Some(sub) = m.get("subscribe") {
            let name = sub.get("name").and_then(Value::as_str).ok_or("subscribe needs a name")?;
            let priority = parse_priority(sub.get("priority"))?;
            let filter = parse_filter(sub.get("filter"))?;
            let subscription = store.subscribe(name, priority, filter);
            self.subscribers.retain(|(n, _)| n != name);
            self.subscribers.push((name.to_owned(), subscription));
        } else if let Some(name) = m.get("unsubscribe") {
            let name = name.as_str().ok_or("unsubscribe takes a name")?;
            let id = self.subscriber(name)?.id();
            store.unsubscribe(id);
        } else if let Some(expect) = m.get("expect") {
            let name = expect.get("subscriber").and_then(Value::as_str).ok_or("expect needs a subscriber")?;
            let bundle = expect.get("bundle").and_then(Value::as_array).ok_or("expect needs a bundle list")?;
            let sub = self.subscriber(name)?;
            let received = match tokio::time::timeout(RECV_BOUND, sub.recv()).await {
                Err(_) => return Err(format!("{name} received no bundle within {RECV_BOUND:?}")),
                Ok(None) => return Err(format!("{name}'s stream ended")),
                Ok(Some(Err(e))) => return Err(format!("{name}'s stream failed: {e}")),
                Ok(Some(Ok(b))) => b,
            };
            let describe = || {
                received
                    .events
                    .iter()
                    .map(|e| format!("{:?} {}", e.event_type, to_value(&e.entity)))
                    .collect::<Vec<_>>()
            };
            if received.events.len() != bundle.len() {
                return Err(format!(
                    "expected {} events, got {}: {:?}",
                    bundle.len(),
                    received.events.len(),
                    describe()
                ));
            }
            for (i, (want, got)) in bundle.iter().zip(&received.events).enumerate() {
                let want_type = match want.get("type").and_then(Value::as_str) {
                    Some("set") => EventType::Set,
                    Some("unset") => EventType::Unset,
                    other => return Err(format!("event {i}: type {other:?}")),
                };
                if want_type != got.event_type {
                    return Err(format!(
                        "event {i}: expected {want_type:?}, got {:?}: {:?}",
                        got.event_type,
                        describe()
                    ));
                }
                match_entity(want.get("entity").ok_or("match without entity")?, &got.entity)
                    .map_err(|e| format!("event {i}: {e}"))?;
            }
            // Dropping the bundle acknowledges it.
        } else if let Some(name) = m.get("expect_nothing") {
            let name = name.as_str().ok_or("expect_nothing takes a name")?;
            store.sync().await;
            match self.subscriber(name)?.try_recv() {
                TryRecv::Empty => {}
                TryRecv::Bundle(b) => return Err(format!("{name} has a bundle waiting: {:?}", b.events)),
                TryRecv::Closed => return Err(format!("{name}'s stream ended")),
                TryRecv::Failed(e) => return Err(format!("{name}'s stream failed: {e}")),
            }
        } else if let Some(name) = m.get("expect_closed") {
            let name = name.as_str().ok_or("expect_closed takes a name")?;
            store.sync().await;
            match self.subscriber(name)?.try_recv() {
                TryRecv::Closed => {}
                TryRecv::Bundle(b) => return Err(format!("{name} is open and has a bundle: {:?}", b.events)),
                TryRecv::Empty => return Err(format!("{name}'s stream is still open")),
                TryRecv::Failed(e) => return Err(format!("{name}'s stream failed instead of ending: {e}")),
            }
        } else if let Some(get) = m.get("get") {
            let id = EntityId::new(
                parse_kind(get.get("kind"))?,
                get.get("id").and_then(Value::as_str).ok_or("get needs an id")?,
            );
            expect_entity(StoreReader::get(store, &id), m.get("expect_entity"))?;
        } else if let Some(id) = m.get("get_pod_for_container") {
            let id = id.as_str().ok_or("get_pod_for_container takes an id")?;
            let pod = store.get_kubernetes_pod_for_container(id).map(Entity::KubernetesPod);
            expect_entity(pod, m.get("expect_entity"))?;
        } else if let Some(kind) = m.get("list") {
            let kind = parse_kind(Some(kind))?;
            let mut ids: Vec<String> = StoreReader::list(store, kind).iter().map(|e| e.id_str().to_string()).collect();
            ids.sort();
            let mut want: Vec<String> = m
                .get("expect_ids")
                .and_then(Value::as_array)
                .ok_or("list needs expect_ids")?
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or("ids are strings"))
                .collect::<Result<_, _>>()?;
            want.sort();
            if ids != want {
                return Err(format!("expected ids {want:?}, got {ids:?}"));
            }
        } else {
            return Err(format!("unknown step {step}"));
        }
        Ok(())
    }
}

/// The step's verb (`get`, not its `expect_entity`), for messages.
fn step_verb(step: &Value) -> String {
    const VERBS: [&str; 16] = [
        "notify",
        "reset",
        "subscribe",
        "unsubscribe",
        "expect",
        "expect_nothing",
        "expect_closed",
        "get",
        "get_pod_for_container",
        "list",
        "events",
        "expect_tags",
        "expect_tags_include",
        "expect_tags_exclude",
        "expect_unknown",
        "advance",
    ];
    let keys = step.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    keys.iter().find(|k| VERBS.contains(&k.as_str())).or(keys.first()).cloned().unwrap_or_default()
}

fn expect_entity(got: Option<Entity>, want: Option<&Value>) -> Result<(), String> {
    match (want, got) {
        (None, _) => Err("missing expect_entity".into()),
        (Some(Value::Null), None) => Ok(()),
        (Some(Value::Null), Some(e)) => Err(format!("expected no entity, got {}", to_value(&e))),
        (Some(_), None) => Err("expected an entity, got none".into()),
        (Some(w), Some(e)) => match_entity(w, &e),
    }
}

/// Runs tagger scenarios: a store, a [`tagger::Tagger`] following it on a manual clock, and a
/// normal-priority probe subscriber. The store serves the probe only after the tagger acknowledged
/// (its tags stored), so once `sync()` returns, every notified batch is tagged.
pub struct TaggerRunner {
    store: Store,
    tagger: std::sync::Arc<tagger::Tagger>,
    clock: std::sync::Arc<tagger::ManualClock>,
    _probe: Subscription,
}

impl std::fmt::Debug for TaggerRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaggerRunner").finish_non_exhaustive()
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("bad duration {text:?}"))?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("bad duration unit in {text:?}: s, m or h")),
    }
}

fn strings(v: &Value) -> Result<Vec<String>, String> {
    v.as_array()
        .ok_or_else(|| format!("expected a list of tags, got {v}"))?
        .iter()
        .map(|t| t.as_str().map(str::to_owned).ok_or_else(|| format!("a tag must be a string, got {t}")))
        .collect()
}

impl TaggerRunner {
    /// Runs one tagger scenario.
    pub async fn run(scenario: &Scenario) -> Result<(), String> {
        let config = match &scenario.config {
            Value::Null => tagger::TaggerConfig::default(),
            // The tagger's config rejects keys it does not read.
            Value::Object(_) => serde_json::from_value(scenario.config.clone()).map_err(|e| format!("config: {e}"))?,
            other => return Err(format!("config must be a map, not {other}")),
        };
        let clock = std::sync::Arc::new(tagger::ManualClock::default());
        let store = Store::new();
        let tagger = std::sync::Arc::new(tagger::Tagger::with_clock(config, clock.clone()));
        let task = tagger.spawn(&store);
        let probe = store.subscribe("conformance-probe", SubscriberPriority::Normal, Filter::all());
        let runner = TaggerRunner { store, tagger, clock, _probe: probe };
        let mut result = Ok(());
        for (i, step) in scenario.steps.iter().enumerate() {
            if let Err(e) = runner.step(step).await {
                result = Err(format!("step {} ({}): {e}", i + 1, step_verb(step)));
                break;
            }
        }
        task.abort();
        runner.store.shutdown().await;
        result
    }

    fn levels(&self, entity: &str) -> tagger::TagInfo {
        self.tagger.store().tag_info(entity).unwrap_or_default()
    }

    async fn step(&self, step: &Value) -> Result<(), String> {
        let m = step.as_object().ok_or("a step must be a map")?;
        if let Some(events) = m.get("events") {
            self.store.notify(parse_events(events)?).await;
            self.store.sync().await;
        } else if let Some(expect) = m.get("expect_tags").or(m.get("expect_tags_include")) {
            let exact = m.contains_key("expect_tags");
            for (entity, levels) in expect.as_object().ok_or("expect_tags takes a map of entities")? {
                let got = self.levels(entity);
                for (level, want) in levels.as_object().ok_or("levels must be a map")? {
                    let have = match level.as_str() {
                        "low" => &got.low,
                        "orchestrator" => &got.orchestrator,
                        "high" => &got.high,
                        "standard" => &got.standard,
                        other => return Err(format!("unknown level {other:?}")),
                    };
                    let want = strings(want)?;
                    let missing: Vec<_> = want.iter().filter(|t| !have.contains(t)).collect();
                    let extra: Vec<_> = have.iter().filter(|t| !want.contains(t)).collect();
                    if !missing.is_empty() || (exact && !extra.is_empty()) {
                        return Err(format!(
                            "{entity} {level}: missing {missing:?}{}; had {have:?}",
                            if exact { format!(", unexpected {extra:?}") } else { String::new() }
                        ));
                    }
                }
            }
        } else if let Some(expect) = m.get("expect_tags_exclude") {
            for (entity, tags) in expect.as_object().ok_or("expect_tags_exclude takes a map")? {
                let all = self.tagger.tag(entity, tagger::TagCardinality::High).to_vec();
                let standard = self.tagger.standard(entity).to_vec();
                for tag in strings(tags)? {
                    if all.contains(&tag) || standard.contains(&tag) {
                        return Err(format!("{entity} has {tag:?}, which it must not: {all:?}"));
                    }
                }
            }
        } else if let Some(entities) = m.get("expect_unknown") {
            for entity in strings(entities)? {
                let tags = self.tagger.tag(&entity, tagger::TagCardinality::High);
                if !tags.is_empty() || self.tagger.store().contains(&entity) {
                    return Err(format!("{entity} should have no tags, has {tags:?}"));
                }
            }
        } else if let Some(by) = m.get("advance") {
            self.clock.advance(parse_duration(by.as_str().ok_or("advance takes a duration like 6m")?)?);
            self.tagger.prune();
        } else {
            return Err(format!("unknown tagger step {step}"));
        }
        Ok(())
    }
}

/// What running one file gave.
#[derive(Debug, Default)]
pub struct FileOutcome {
    /// Scenarios that passed.
    pub passed: usize,
    /// Scenarios not run, with why.
    pub skipped: Vec<String>,
    /// Failures: scenario name and message.
    pub failed: Vec<(String, String)>,
}

/// Runs the store scenarios of `file`; scenarios that need the tagger are handed to `tagger`
/// (usually [`TaggerRunner::run`]), which may return `None` to skip them.
pub async fn run_file<F, Fut>(file: &ScenarioFile, mut tagger: F) -> FileOutcome
where
    F: FnMut(Scenario) -> Fut,
    Fut: std::future::Future<Output = Option<Result<(), String>>>,
{
    let mut outcome = FileOutcome::default();
    for scenario in &file.scenarios {
        let result = if scenario.needs_tagger() {
            tagger(scenario.clone()).await
        } else {
            Some(StoreRunner::run(scenario).await)
        };
        match result {
            None => outcome.skipped.push(scenario.name.clone()),
            Some(Ok(())) => outcome.passed += 1,
            Some(Err(e)) => outcome.failed.push((scenario.name.clone(), e)),
        }
    }
    outcome
}
