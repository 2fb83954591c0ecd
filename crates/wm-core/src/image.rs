//! Container image references: `[registry/]path[:tag][@digest]` split into what tags need.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::intern::Interner;
use crate::shared::{Parts, Shared};

/// A container's image, as the runtime or orchestrator names it: an [`ImageRef`] behind one
/// copy-on-write pointer.
///
/// Every way of making one ([`ContainerImage::parse`], [`ContainerImage::parse_with_id`],
/// `From<ImageRef>`, deserializing) returns the image interner's copy, so all the containers
/// that run an image share one allocation, and a collector cannot forget to share it. Its
/// fields read (`image.tag`) and write (`image.id = …`) as the `ImageRef`'s; a write copies the
/// image first, leaving the shared copy unchanged.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ContainerImage(Shared<ImageRef>);

/// The images in use: one copy of each, for as long as some container holds it. A node runs few
/// images in many containers.
static IMAGES: Interner<Arc<ImageRef>> = Interner::new();

/// The parts of an image reference (see [`ContainerImage`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct ImageRef {
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

static NO_IMAGE: ImageRef = ImageRef {
    raw_name: String::new(),
    name: String::new(),
    registry: String::new(),
    short_name: String::new(),
    tag: String::new(),
    id: String::new(),
};

impl Parts for ImageRef {
    fn none() -> &'static Self {
        &NO_IMAGE
    }
}

impl ContainerImage {
    /// Splits a reference into its parts (see [`ImageRef::parse`]) and returns the interner's
    /// copy of the image. Never fails: what cannot be split stays in `raw_name` and `name`.
    pub fn parse(raw: &str) -> Self {
        ImageRef::parse(raw).into()
    }

    /// Splits a reference like [`ContainerImage::parse`], then sets the image id to `id` unless
    /// `id` is empty, and returns the interner's copy.
    pub fn parse_with_id(raw: &str, id: &str) -> Self {
        let mut image = ImageRef::parse(raw);
        if !id.is_empty() {
            id.clone_into(&mut image.id);
        }
        image.into()
    }

    /// Counts the distinct images interned now (for tests and telemetry).
    pub fn interned_count() -> usize {
        IMAGES.len()
    }

    /// Tells whether both share one allocation (two images with no fields set count as shared).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        self.0.ptr_eq(&other.0)
    }

    /// Tells whether nothing is known about the image: no reference, no name, no id.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Fills each empty field from `lower`.
    ///
    /// An image with every field empty takes `lower`'s whole, sharing it; any other is copied
    /// only when `lower` fills one of its gaps.
    pub fn fill_from(&mut self, lower: &Self) {
        if self.0.is_none() {
            self.clone_from(lower);
            return;
        }
        let fills = {
            let (mine, theirs) = (&**self, &**lower);
            [
                (&mine.raw_name, &theirs.raw_name),
                (&mine.name, &theirs.name),
                (&mine.registry, &theirs.registry),
                (&mine.short_name, &theirs.short_name),
                (&mine.tag, &theirs.tag),
                (&mine.id, &theirs.id),
            ]
            .iter()
            .any(|(m, t)| m.is_empty() && !t.is_empty())
        };
        if fills {
            self.deref_mut().fill_from(lower);
        }
    }
}

impl From<ImageRef> for ContainerImage {
    /// Returns the interner's copy of `image`; an image with every field empty allocates nothing.
    fn from(image: ImageRef) -> Self {
        if image == NO_IMAGE {
            return Self::default();
        }
        Self(Shared(Some(IMAGES.intern(Arc::new(image)))))
    }
}

impl Drop for ContainerImage {
    /// Gives the reference back to the interner, which removes the image when no container
    /// uses it any more.
    fn drop(&mut self) {
        if let Some(image) = self.0.0.take() {
            IMAGES.release(image);
        }
    }
}

impl Deref for ContainerImage {
    type Target = ImageRef;

    fn deref(&self) -> &ImageRef {
        &self.0
    }
}

impl DerefMut for ContainerImage {
    /// Returns the fields to write, copied first when the image is shared.
    fn deref_mut(&mut self) -> &mut ImageRef {
        &mut self.0
    }
}

impl fmt::Debug for ContainerImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for ContainerImage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl ImageRef {
    /// Splits a reference into its parts. Never fails: what cannot be split stays in `raw_name`
    /// and `name`.
    ///
    /// A bare image id (`sha256:<hex>`) sets only `raw_name` and `id`; a reference with neither
    /// tag nor digest gets the tag `latest`.
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

    /// Tells whether nothing is known about the image: no reference, no name, no id.
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
            Repr::Fields(f) => ImageRef {
                raw_name: f.raw_name,
                name: f.name,
                registry: f.registry,
                short_name: f.short_name,
                tag: f.tag,
                id: f.id,
            }
            .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(raw: &str) -> (String, String, String, String, String) {
        let i = ContainerImage::parse(raw);
        (i.name.clone(), i.registry.clone(), i.short_name.clone(), i.tag.clone(), i.id.clone())
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
    fn copies_share_the_parts_until_one_is_written() {
        let a = ContainerImage::parse("gcr.io/team/app:2.0");
        let mut b = a.clone();
        assert!(b.ptr_eq(&a));
        b.id = "sha256:1".into();
        assert!(!b.ptr_eq(&a));
        assert_eq!((a.id.as_str(), b.id.as_str(), b.tag.as_str()), ("", "sha256:1", "2.0"));
        // Filling from a lower source: nothing known takes it whole; a gap is filled on a copy.
        let mut empty = ContainerImage::default();
        assert!(empty.is_empty() && empty == ContainerImage::from(ImageRef::default()));
        empty.fill_from(&b);
        assert!(empty.ptr_eq(&b));
        let mut same = a.clone();
        same.fill_from(&ContainerImage::parse("other:1"));
        assert!(same.ptr_eq(&a), "nothing to fill: still shared");
        let mut gap = a.clone();
        gap.fill_from(&b);
        assert_eq!(gap, b);
        assert!(!gap.ptr_eq(&a) && a.id.is_empty());
    }

    #[test]
    fn deserializes_from_a_raw_string_or_fields() {
        let a: ContainerImage = serde_json::from_str(r#""nginx:1.25""#).unwrap();
        assert_eq!(a.tag, "1.25");
        let b: ContainerImage = serde_json::from_str(r#"{"name":"nginx","tag":"1"}"#).unwrap();
        assert_eq!((b.name.as_str(), b.tag.as_str()), ("nginx", "1"));
    }
}
