//! The answer to a lookup: a handle on an entity's record, read as a list of tags.

use std::fmt;

use super::packed::Level;
use super::record::Record;

/// Reads an entity's tags at one cardinality, or its standard tags: a handle on its record,
/// iterated as `&str`s.
///
/// Building one allocates nothing: it clones the record's pointer and counts the tags.
#[derive(Clone, Default)]
pub struct Tags {
    record: Option<Record>,
    /// The levels read, `first..=last`.
    first: Level,
    last: Level,
    len: u32,
}

impl Tags {
    /// Reads the levels `first..=last` of `record`.
    pub(crate) fn of(record: &Record, first: Level, last: Level) -> Self {
        let len = record.shown(first, last);
        Self { record: Some(record.clone()), first, last, len }
    }

    /// Counts the tags.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Tells whether there is none (an unknown entity, or cardinality `none`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Iterates over the tags.
    pub fn iter(&self) -> TagsIter<'_> {
        let record = self.record.as_ref();
        let (next, end, pos) = record.and_then(|r| r.part(0)).map_or((0, 0, 0), |p| p.level_bounds(self.first));
        TagsIter { record, level: self.first, last: self.last, part: 0, offset: 0, next, end, pos, left: self.len }
    }

    /// Copies the tags into owned strings.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterates over a [`Tags`]: level by level, part by part, skipping what the merge left out.
#[derive(Clone)]
pub struct TagsIter<'a> {
    record: Option<&'a Record>,
    level: Level,
    last: Level,
    /// The current part's slot in the record.
    part: usize,
    /// The index, counting through the parts, of the current part's first tag.
    offset: u32,
    /// The next tag's index in the current part.
    next: u32,
    /// The index past the current part's last tag of this level.
    end: u32,
    /// Where the next tag's length starts in the part's text.
    pos: usize,
    /// How many tags are still to come.
    left: u32,
}

impl fmt::Debug for TagsIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagsIter").field("left", &self.left).finish_non_exhaustive()
    }
}

impl<'a> Iterator for TagsIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let record = self.record?;
        while self.left > 0 {
            if let Some(part) = record.part(self.part) {
                if self.next < self.end {
                    let n = (self.offset + self.next) as usize;
                    let (tag, after) = part.read(self.pos);
                    self.next += 1;
                    self.pos = after;
                    if record.is_hidden(n) {
                        continue;
                    }
                    self.left -= 1;
                    return Some(tag);
                }
                self.offset += part.count();
            }
            self.part += 1;
            if self.part >= record.slots() {
                // Every part's tags of this level are read: the next level, from the first part.
                match self.level.next().filter(|l| *l <= self.last) {
                    Some(level) => self.level = level,
                    None => return None,
                }
                self.part = 0;
                self.offset = 0;
            }
            (self.next, self.end, self.pos) = record.part(self.part).map_or((0, 0, 0), |p| p.level_bounds(self.level));
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for TagsIter<'_> {}
