//! Scenarios: an untimed `setup` that pushes fixtures and precomputes digests, then `op(i)`
//! run for each op index. Op indices `0..warmup` are the warmup, the rest are measured; content
//! and tag names derive from the index, so warmup and measured ops never collide.

pub mod blob;
pub mod document;
pub mod loopback;
pub mod manifest;
pub mod npm;
pub mod pypi;

use std::sync::Arc;

use anyhow::Context as _;

use crate::cli::{ScenarioName, Settings};
use crate::client::{Conn, Target};

/// A scenario, set up and ready to run ops.
pub enum Scenario {
    /// New blob per op.
    BlobPush(blob::Push),
    /// GET of the fixture blob.
    BlobPull(blob::Stored),
    /// HEAD of the fixture blob.
    BlobHead(blob::Stored),
    /// GET or HEAD of the `bench` tag.
    Manifest(manifest::Tagged),
    /// PUT of a new tag per op.
    TagCommit(manifest::TagCommit),
    /// Local TCP ceiling.
    Loopback(loopback::Loopback),
    /// GET of blob `i` (pushed elsewhere) from the read-through node.
    CrossNodePull(Vec<blob::Stored>),
    /// GET of a packument.
    NpmPackument(document::Document),
    /// GET of a simple page.
    PypiSimple(document::Document),
}

impl Scenario {
    /// Runs the untimed setup against `target` (nothing for loopback).
    pub async fn setup(s: &Settings, target: Option<Arc<Target>>) -> anyhow::Result<Self> {
        if s.scenario == ScenarioName::Loopback {
            return Ok(Self::Loopback(loopback::Loopback::setup(s.size).await?));
        }
        let target = target.context("a registry scenario needs --target")?;
        let mut conn = Conn::new(target);
        let total = s.warmup + s.ops;
        Ok(match s.scenario {
            ScenarioName::BlobPush | ScenarioName::DockerPush => {
                let (seed, size) = (s.seed, s.size);
                let digests =
                    tokio::task::spawn_blocking(move || blob::digests(seed, total, size)).await?;
                let pusher = if s.scenario == ScenarioName::DockerPush {
                    blob::Pusher::Docker
                } else {
                    blob::Pusher::ContainersImage
                };
                Self::BlobPush(blob::Push {
                    name: s.name.clone(),
                    size,
                    seed,
                    digests,
                    pusher,
                })
            }
            ScenarioName::BlobPull => {
                Self::BlobPull(blob::Stored::setup(&mut conn, &s.name, s.size).await?)
            }
            ScenarioName::BlobHead => {
                Self::BlobHead(blob::Stored::setup(&mut conn, &s.name, s.size).await?)
            }
            ScenarioName::ManifestGet | ScenarioName::ManifestHead => {
                let head = s.scenario == ScenarioName::ManifestHead;
                Self::Manifest(manifest::Tagged::setup(&mut conn, &s.name, s.size, head).await?)
            }
            ScenarioName::TagCommit | ScenarioName::TagOnly => {
                let unique = s.scenario == ScenarioName::TagCommit;
                Self::TagCommit(
                    manifest::TagCommit::setup(&mut conn, &s.name, s.size, s.seed, total, unique)
                        .await?,
                )
            }
            ScenarioName::CrossNodePull => {
                let mut blobs = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
                for i in 0..total {
                    let state = crate::prng::stream_seed(s.seed, i);
                    blobs.push(blob::Stored::setup_from(&mut conn, &s.name, s.size, state).await?);
                }
                Self::CrossNodePull(blobs)
            }
            ScenarioName::NpmPackument => {
                Self::NpmPackument(npm::setup(&mut conn, &s.npm_prefix, s.versions).await?)
            }
            ScenarioName::PypiSimple => {
                Self::PypiSimple(pypi::setup(&mut conn, &s.pypi_prefix, s.versions).await?)
            }
            ScenarioName::Loopback => anyhow::bail!("loopback has no registry setup"),
        })
    }

    /// Runs op `i`; returns the blob bytes it moved.
    pub async fn op(&self, conn: &mut Conn, i: u64) -> anyhow::Result<u64> {
        match self {
            Self::BlobPush(p) => p.op(conn, i).await,
            Self::BlobPull(b) => b.get(conn).await,
            Self::BlobHead(b) => b.head(conn).await,
            Self::Manifest(m) => m.op(conn).await,
            Self::TagCommit(t) => t.op(conn, i).await,
            Self::Loopback(l) => l.op().await,
            Self::NpmPackument(p) => p.op(conn).await,
            Self::PypiSimple(p) => p.op(conn).await,
            Self::CrossNodePull(blobs) => {
                let blob = usize::try_from(i)
                    .ok()
                    .and_then(|i| blobs.get(i))
                    .context("op index beyond the blobs pushed in setup")?;
                blob.get(conn).await
            }
        }
    }

    /// The payload size reported as `size`: the blob size, or the manifest's length.
    pub fn reported_size(&self, s: &Settings) -> u64 {
        match self {
            Self::Manifest(m) => m.len(),
            Self::TagCommit(t) => t.len(),
            Self::NpmPackument(p) => p.len(),
            Self::PypiSimple(p) => p.len(),
            _ => s.size,
        }
    }
}
