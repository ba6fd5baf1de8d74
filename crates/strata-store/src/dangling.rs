//! Dangling images: built without a tag, kept until the user prunes them, as Docker does.
//!
//! `docker build .` without `-t` leaves an image listed as `<none>` that its ID names and that
//! only `docker image prune` removes. The store does the same without adding entries to
//! `index.json` (whose entries are tags other tools read): an untagged build result is listed
//! in the gc roots file `strata/v1/roots/dangling` ([`Store::keep_dangling`]), so plain
//! [`Store::gc`] keeps it, [`Store::resolve`] finds it by ID prefix, and
//! [`Store::prune_dangling`] forgets the listed images that no tag names, for a gc to free.
//! An image that is later tagged stops being dangling. Docker's retag rule holds too: when
//! [`Store::retag`] (`strata tag`, `strata build -t`, `strata import`) moves a tag away from
//! an image that then has no tag left, that image becomes dangling, listed as `<none>` until
//! pruned, rather than silently freed by the next gc. An image whose last tag is removed
//! (`rmi`) is not kept: removing was asked for.
//!
//! [`Store::remove_image`] is `docker rmi`: by tag it removes that tag; by ID it removes the
//! image's only tag or its dangling entry, and refuses an image with several tags unless forced.

use std::collections::BTreeSet;
use std::fs;

use oci_spec::image::Descriptor;

use crate::blob::write_atomic;
use crate::error::StoreError;
use crate::image::{descriptor_digest, ref_name};
use crate::store::Store;
use strata_types::{Digest, Reference};

/// The gc roots file listing dangling images (reserved: do not pass it to
/// [`Store::set_gc_roots`]).
pub const DANGLING_ROOTS: &str = "dangling";

/// What [`Store::remove_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedImage {
    /// The image's manifest digest.
    pub digest: Digest,
    /// Tags removed (`name:tag`), sorted.
    pub untagged: Vec<String>,
    /// Whether the image no longer has a tag or a dangling entry (its blobs go at the next gc).
    pub deleted: bool,
}

impl Store {
    /// Lists `manifest` as a dangling image, kept by gc until [`Store::prune_dangling`]. For a
    /// build or import that produced no tag.
    pub fn keep_dangling(&self, manifest: &Digest) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let mut listed = self.dangling_list()?;
        if listed.insert(*manifest) {
            self.write_dangling_list(&listed)?;
        }
        Ok(())
    }

    /// Tags `manifest` as `name` (as [`Store::tag`]) by Docker's retag rule: if the tag named
    /// another image before and no other tag names that one now, it is kept as dangling
    /// ([`Store::keep_dangling`]) and its digest returned. For commands that give a user's
    /// image a name (tag, build, import); [`Store::tag`] alone is for names the store keeps
    /// for itself (a pulled base's reference), whose old images need no listing.
    pub fn retag(&self, name: &str, manifest: &Descriptor) -> Result<Option<Digest>, StoreError> {
        let key = crate::image::tag_key(name)?;
        let before = self.tags()?.into_iter().find(|(t, _)| *t == key).map(|(_, d)| d);
        self.tag(name, manifest)?;
        let Some(before) = before.filter(|b| b.digest() != manifest.digest()) else {
            return Ok(None);
        };
        let old = descriptor_digest(&before)?;
        if self.tagged_digests()?.contains(&old) || !self.has_blob(&old) {
            return Ok(None);
        }
        self.keep_dangling(&old)?;
        Ok(Some(old))
    }

    /// The dangling images: listed by [`Store::keep_dangling`], still present, and named by no
    /// tag. Sorted by digest.
    pub fn dangling_images(&self) -> Result<Vec<Descriptor>, StoreError> {
        let tagged = self.tagged_digests()?;
        let mut out = Vec::new();
        for digest in self.dangling_list()? {
            if tagged.contains(&digest) || !self.has_blob(&digest) {
                continue;
            }
            out.push(self.untagged_descriptor(&digest)?);
        }
        Ok(out)
    }

    /// Forgets every dangling image (and list entries that a tag now names or whose blob is
    /// gone) and returns the digests of the dangling images forgotten; a following
    /// [`Store::gc`] frees their blobs.
    pub fn prune_dangling(&self) -> Result<Vec<Digest>, StoreError> {
        let _lock = self.lock()?;
        let listed = self.dangling_list()?;
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        let tagged = self.tagged_digests()?;
        let pruned =
            listed.iter().filter(|d| !tagged.contains(d) && self.has_blob(d)).copied().collect();
        self.write_dangling_list(&BTreeSet::new())?;
        Ok(pruned)
    }

    /// `docker rmi REFERENCE`: a tag name removes that tag; an ID (digest or unique prefix)
    /// removes the image's only tag, or its dangling entry. An ID whose image has several tags
    /// fails with [`StoreError::ImageHasTags`] unless `force`, which removes them all.
    pub fn remove_image(&self, reference: &str, force: bool) -> Result<RemovedImage, StoreError> {
        let tags = self.tags()?;
        if let Ok(parsed) = reference.parse::<Reference>() {
            if parsed.digest().is_none() {
                let key = parsed.tag_key();
                let by_name = tags
                    .iter()
                    .find(|(t, _)| *t == key)
                    .or_else(|| tags.iter().find(|(t, _)| t == reference));
                if let Some((tag, desc)) = by_name {
                    let digest = descriptor_digest(desc)?;
                    self.untag(tag)?;
                    let deleted = !self.tags()?.iter().any(|(_, d)| d.digest() == desc.digest())
                        && !self.dangling_list()?.contains(&digest);
                    return Ok(RemovedImage { digest, untagged: vec![tag.clone()], deleted });
                }
            }
        }
        let desc = self.resolve(reference)?;
        let digest = descriptor_digest(&desc)?;
        let mine: Vec<String> = tags
            .iter()
            .filter(|(_, d)| d.digest() == desc.digest())
            .map(|(t, _)| t.clone())
            .collect();
        if mine.len() > 1 && !force {
            return Err(StoreError::ImageHasTags { digest, tags: mine });
        }
        for tag in &mine {
            self.untag(tag)?;
        }
        let _lock = self.lock()?;
        let mut listed = self.dangling_list()?;
        if listed.remove(&digest) {
            self.write_dangling_list(&listed)?;
        }
        Ok(RemovedImage { digest, untagged: mine, deleted: true })
    }

    /// The digests in the dangling list, whatever their state.
    pub(crate) fn dangling_list(&self) -> Result<BTreeSet<Digest>, StoreError> {
        let path = self.roots_dir().join(DANGLING_ROOTS);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        Ok(crate::gc::parse_roots(&path, &text)?.into_iter().collect())
    }

    /// Replaces the list; the caller holds the store lock.
    fn write_dangling_list(&self, digests: &BTreeSet<Digest>) -> Result<(), StoreError> {
        let dir = self.roots_dir();
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        let mut text = String::from("# untagged images kept until `strata image prune`\n");
        for d in digests {
            text.push_str(&d.to_string());
            text.push('\n');
        }
        self.ensure_meta_dirs()?;
        write_atomic(&self.tmp_dir(), &dir.join(DANGLING_ROOTS), text.as_bytes())
    }

    fn tagged_digests(&self) -> Result<BTreeSet<Digest>, StoreError> {
        let index = self.read_index()?;
        Ok(index
            .manifests()
            .iter()
            .filter(|m| ref_name(m).is_some())
            .filter_map(|m| descriptor_digest(m).ok())
            .collect())
    }
}
