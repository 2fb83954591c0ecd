//! Container image references: `[registry/]path[:tag][@digest]` split into what tags need.

use serde::{Deserialize, Deserializer, Serialize};

/// A container's image, as the runtime or orchestrator names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct ContainerImage {
    /// The reference as given (`gcr.io/team/app:2.0`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub raw_name: String,
    /// The reference without tag or digest (`gcr.io/team/app`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: String,
    /// The registry host, when the reference names one (`gcr.io`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub registry: String,
    /// The last path component (`app`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub short_name: String,
    /// The tag; `latest` when the reference has neither tag nor digest.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub tag: String,
    /// The image id or repository digest (`sha256:…`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub id: String,
}

impl ContainerImage {
    /// Splits a reference. Never fails: what cannot be split stays in `raw_name` and `name`.
    pub fn parse(raw: &str) -> Self {
        let raw = raw.trim();
        let mut image = Self { raw_name: raw.to_owned(), ..Self::default() };
        if raw.is_empty() {
            return image;
        }
        // A bare image id (`sha256:<hex>`) names no repository.
        if let Some(hex) = raw.strip_prefix("sha256:")
            && !hex.is_empty()
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            image.id = raw.to_owned();
            return image;
        }
        let (reference, digest) = match raw.split_once('@') {
            Some((r, d)) => (r, d),
            None => (raw, ""),
        };
        let last_slash = reference.rfind('/');
        let (name, tag) = match reference.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => (&reference[..colon], &reference[colon + 1..]),
            _ => (reference, ""),
        };
        image.name = name.to_owned();
        image.short_name = name.rsplit('/').next().unwrap_or(name).to_owned();
        if let Some((first, _)) = name.split_once('/')
            && (first.contains('.') || first.contains(':') || first == "localhost")
        {
            image.registry = first.to_owned();
        }
        image.tag = match (tag, digest) {
            ("", "") => "latest".to_owned(),
            (tag, _) => tag.to_owned(),
        };
        image.id = digest.to_owned();
        image
    }

    /// Whether nothing is known about the image.
    pub fn is_empty(&self) -> bool {
        self.raw_name.is_empty() && self.name.is_empty() && self.id.is_empty()
    }

    /// Fills each empty field from `lower`.
    pub fn fill_from(&mut self, lower: &Self) {
        for (mine, theirs) in [
            (&mut self.raw_name, &lower.raw_name),
            (&mut self.name, &lower.name),
            (&mut self.registry, &lower.registry),
            (&mut self.short_name, &lower.short_name),
            (&mut self.tag, &lower.tag),
            (&mut self.id, &lower.id),
        ] {
            if mine.is_empty() {
                mine.clone_from(theirs);
            }
        }
    }
}

impl<'de> Deserialize<'de> for ContainerImage {
    /// Accepts either a raw reference (`"nginx:1.25"`, parsed) or the structured form.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            #[serde(default)]
            raw_name: String,
            #[serde(default)]
            name: String,
            #[serde(default)]
            registry: String,
            #[serde(default)]
            short_name: String,
            #[serde(default)]
            tag: String,
            #[serde(default)]
            id: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Raw(String),
            Fields(Fields),
        }
        Ok(match Repr::deserialize(d)? {
            Repr::Raw(raw) => Self::parse(&raw),
            Repr::Fields(f) => Self {
                raw_name: f.raw_name,
                name: f.name,
                registry: f.registry,
                short_name: f.short_name,
                tag: f.tag,
                id: f.id,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(raw: &str) -> (String, String, String, String, String) {
        let i = ContainerImage::parse(raw);
        (i.name, i.registry, i.short_name, i.tag, i.id)
    }

    #[test]
    fn references_split_into_name_registry_short_name_tag_and_digest() {
        type Split<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str);
        let cases: &[(&str, Split<'_>)] = &[
            ("nginx:1.25", ("nginx", "", "nginx", "1.25", "")),
            ("redis", ("redis", "", "redis", "latest", "")),
            ("gcr.io/team/app:2.0", ("gcr.io/team/app", "gcr.io", "app", "2.0", "")),
            ("docker.io/library/busybox:latest", ("docker.io/library/busybox", "docker.io", "busybox", "latest", "")),
            ("datadog/agent:7", ("datadog/agent", "", "agent", "7", "")),
            ("localhost:5000/app", ("localhost:5000/app", "localhost:5000", "app", "latest", "")),
            ("localhost/app:v1", ("localhost/app", "localhost", "app", "v1", "")),
            ("nginx@sha256:abcd", ("nginx", "", "nginx", "", "sha256:abcd")),
            ("nginx:1.25@sha256:abcd", ("nginx", "", "nginx", "1.25", "sha256:abcd")),
            ("sha256:0123abcd", ("", "", "", "", "sha256:0123abcd")),
        ];
        for (raw, (name, registry, short, tag, id)) in cases {
            assert_eq!(
                split(raw),
                (name.to_string(), registry.to_string(), short.to_string(), tag.to_string(), id.to_string()),
                "{raw}"
            );
        }
    }

    #[test]
    fn odd_references_never_panic() {
        for raw in ["", ":", "/", "@", "a:", ":b", "a/b/", "::::", "@@", "sha256:", "x/y:z@"] {
            let image = ContainerImage::parse(raw);
            assert_eq!(image.raw_name, raw.trim());
        }
    }

    #[test]
    fn deserializes_from_a_raw_string_or_fields() {
        let a: ContainerImage = serde_json::from_str(r#""nginx:1.25""#).unwrap();
        assert_eq!(a.tag, "1.25");
        let b: ContainerImage = serde_json::from_str(r#"{"name":"nginx","tag":"1"}"#).unwrap();
        assert_eq!((b.name.as_str(), b.tag.as_str()), ("nginx", "1"));
    }
}
