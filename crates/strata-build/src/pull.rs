//! Registry bases on demand: `FROM host/repo:tag` and `FROM docker://host/repo:tag`.
//!
//! A pulled image is kept in the store tagged with its full reference (`host/repo:tag`), so
//! the next build finds it without the network ([`PullPolicy::Missing`], the default, and
//! [`PullPolicy::Never`]); [`PullPolicy::Always`] asks the registry every build, which costs a
//! manifest request when nothing changed because the store already has every blob. A
//! reference is decided once per build: stages that start (in parallel) from the same base
//! wait on one entry, so one of them pulls and the others reuse its result. A registry's
//! client is made on its first pull only, so a build that pulls nothing never reads
//! credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strata_registry::{Client, PullOptions, Reference};
use strata_store::oci_spec::image::Descriptor;
use strata_store::{Image, Store, StoreError};

use crate::error::{BuildError, Result};
use crate::options::{BuildOptions, PullPolicy};
use crate::progress::{BuildEvent, ProgressSink};

/// The registry references a build has resolved, and the clients it pulls with.
#[derive(Default)]
pub(crate) struct Pulls {
    /// One client per registry host, made on its first pull.
    clients: Mutex<HashMap<String, Arc<Client>>>,
    /// One slot per reference; its lock is held while the reference is being decided.
    resolved: Mutex<HashMap<String, Arc<Mutex<Option<Descriptor>>>>>,
}

impl Pulls {
    /// The image `reference` names, from the store or the registry as `opts.pull` says.
    /// `written` is the reference as the recipe wrote it (for errors).
    pub fn image(
        &self,
        store: &Store,
        opts: &BuildOptions,
        progress: &dyn ProgressSink,
        reference: &Reference,
        written: &str,
    ) -> Result<Image> {
        let key = reference.to_string();
        let slot = {
            let mut resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(resolved.entry(key.clone()).or_default())
        };
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(descriptor) = slot.as_ref() {
            return Ok(store.image(descriptor)?);
        }
        let local = match store.load_image(&key) {
            Ok(image) => Some(image),
            Err(StoreError::ImageNotFound { .. } | StoreError::InvalidReference(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let image = match (opts.pull, local) {
            (PullPolicy::Missing, Some(image)) => image,
            (PullPolicy::Never, Some(image)) => image,
            (PullPolicy::Never, None) => {
                return Err(BuildError::ImageNotInStore {
                    reference: written.to_string(),
                    why: "--pull=never forbids pulling it",
                })
            }
            (PullPolicy::Missing | PullPolicy::Always, _) => {
                self.pull(store, opts, progress, reference)?
            }
        };
        *slot = Some(image.manifest_descriptor.clone());
        Ok(image)
    }

    fn pull(
        &self,
        store: &Store,
        opts: &BuildOptions,
        progress: &dyn ProgressSink,
        reference: &Reference,
    ) -> Result<Image> {
        let err = |source| BuildError::Pull {
            reference: reference.to_string(),
            source: Box::new(source),
        };
        let host = reference.domain().unwrap_or_default().to_string();
        let client = {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            match clients.get(&host) {
                Some(c) => Arc::clone(c),
                None => {
                    let mut options = opts.registry.clone();
                    if !opts.tls_verify {
                        options.insecure.push(host.clone());
                    }
                    let c = Arc::new(Client::new(options).map_err(err)?);
                    clients.insert(host, Arc::clone(&c));
                    c
                }
            }
        };
        progress.event(&BuildEvent::PullStart { reference: reference.to_string() });
        let pulled = strata_registry::pull(
            &client,
            store,
            reference,
            &PullOptions::default(),
            &strata_registry::NoProgress,
        )
        .map_err(err)?;
        progress.event(&BuildEvent::PullDone {
            reference: reference.to_string(),
            digest: pulled.image.manifest_descriptor.digest().to_string(),
            blobs_downloaded: pulled.report.downloaded,
            blobs_present: pulled.report.present,
            bytes: pulled.report.bytes,
        });
        Ok(pulled.image)
    }
}
