//! A region's own account of an erasure, in its own store (never a tenant's bucket):
//! where the listing is, what was counted, the batch being deleted, and at the end the
//! signed receipt. Written after every batch, so a redelivered request resumes where
//! its worker stopped and counts each object once; a batch is recorded before it is
//! deleted, so a worker that dies between deleting and announcing has its successor
//! announce it again.

use bytes::Bytes;
use locality_proto::gdpr::{erasure_journal_key, EraseRequest, ErasurePass, ErasureReceipt};
use locality_proto::time::{now_millis, Millis};
use serde::{Deserialize, Serialize};

use crate::store::{RegionStore, StoreError};

/// Keys deleted (and announced) together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub keys: Vec<String>,
    pub bytes: u64,
    /// Of `keys`, how many the ordinary object path refuses.
    pub odd: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErasureJournal {
    pub requested_at_ms: Millis,
    pub started_at_ms: Millis,
    /// Which process works on it, and when it last wrote here: another delivery of
    /// the same erasure waits while this is fresh.
    pub runner: String,
    pub updated_at_ms: Millis,
    /// The tombstone marker is written.
    pub marked: bool,
    /// The pass under way (or last finished).
    pub pass: ErasurePass,
    pub first_pass_done: bool,
    /// Which of the scope's prefixes is being listed, and after which key.
    pub prefix_index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    pub odd_keys_deleted: u64,
    /// In the pass under way: objects of the scope written for a newer request.
    pub objects_kept_newer: u64,
    pub uploads_aborted: u64,
    /// Recorded before it is deleted; counted once announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Batch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<ErasureReceipt>,
}

impl ErasureJournal {
    pub fn new(request: &EraseRequest, runner: &str) -> Self {
        let now = now_millis();
        Self {
            requested_at_ms: request.requested_at_ms,
            started_at_ms: now,
            runner: runner.to_string(),
            updated_at_ms: now,
            ..Self::default()
        }
    }

    pub async fn load(
        store: &RegionStore,
        request: &EraseRequest,
    ) -> Result<Option<Self>, StoreError> {
        let key = erasure_journal_key(&request.tenant, &request.erasure_id);
        match store.get(&key).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub async fn save(
        &mut self,
        store: &RegionStore,
        request: &EraseRequest,
    ) -> Result<(), StoreError> {
        self.updated_at_ms = now_millis();
        let key = erasure_journal_key(&request.tenant, &request.erasure_id);
        let body = serde_json::to_vec(self).expect("journals serialise");
        store.put(&key, Bytes::from(body)).await
    }

    /// Starts `pass` unless it is the one under way: its listing from the top, its own
    /// count of what it keeps.
    pub fn begin(&mut self, pass: ErasurePass) {
        if self.pass != pass {
            self.pass = pass;
            self.prefix_index = 0;
            self.cursor = None;
            self.objects_kept_newer = 0;
        }
    }

    /// The pending batch is deleted and announced: it counts.
    pub fn settle_pending(&mut self) {
        if let Some(batch) = self.pending.take() {
            self.objects_deleted += batch.keys.len() as u64;
            self.bytes_deleted += batch.bytes;
            self.odd_keys_deleted += batch.odd;
        }
    }

    /// Whether another process worked on this erasure within `lease_ms`.
    pub fn held_by_another(&self, runner: &str, lease_ms: Millis) -> bool {
        self.receipt.is_none()
            && self.runner != runner
            && now_millis() - self.updated_at_ms < lease_ms
    }
}
