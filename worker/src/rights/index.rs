//! The region's day index of what it wrote ([`locality_proto::keys::INDEX`]): an empty
//! entry per asset and day, written before the objects it stands for, so no object of
//! the layout is ever stored without one. The retention sweep reads it instead of
//! listing everything a tenant keeps; an erasure deletes the entries that named its
//! scope like the objects themselves.

use std::collections::BTreeSet;

use bytes::Bytes;
use futures::StreamExt;
use locality_proto::audit::day_of;
use locality_proto::keys::{index_entry, index_prefix, is_day, IndexedKind};
use locality_proto::time::{now_millis, Millis};
use locality_proto::TenantId;

use crate::store::{Origin, RegionStores, StoreError};

/// Writes the entries standing for `keys` of `tenant`, about to be written at `at_ms`
/// with `origin` (as the objects are: an erasure judges an entry as it judges them).
/// One request per asset (a job's outputs share one), none for keys outside the layout.
pub async fn note_written<'a>(
    stores: &RegionStores,
    tenant: &TenantId,
    keys: impl IntoIterator<Item = &'a str>,
    at_ms: Millis,
    origin: &Origin,
) -> Result<(), StoreError> {
    let day = day_of(at_ms);
    let entries: BTreeSet<String> = keys
        .into_iter()
        .filter_map(|key| index_entry(key, tenant, &day))
        .collect();
    for entry in entries {
        let store = stores.for_key(&entry);
        store
            .put_tagged(&entry, Bytes::new(), Some(origin), None)
            .await?;
    }
    Ok(())
}

/// [`note_written`] on the real clock.
pub async fn note_writing<'a>(
    stores: &RegionStores,
    tenant: &TenantId,
    keys: impl IntoIterator<Item = &'a str>,
    origin: &Origin,
) -> Result<(), StoreError> {
    note_written(stores, tenant, keys, now_millis(), origin).await
}

/// Sorts after every name a subject or asset may have (`[A-Za-z0-9_-]`), so listing
/// after `DAY/~` goes on at the next day.
const AFTER_EVERY_NAME: &str = "~";

/// Deletes the entries of `tenant`'s index naming `subject` (only those of `asset`,
/// when given) whose origin is not after `before_ms`, the erasure's request: it forgets
/// them like the objects they stood for (a job begun before it and still writing
/// included), and keeps those written for what came after it. Returns how many.
/// Reads two listings per day the index holds, never the entries of other subjects.
pub async fn forget(
    stores: &RegionStores,
    tenant: &TenantId,
    subject: &str,
    asset: Option<&str>,
    before_ms: Millis,
) -> Result<u64, StoreError> {
    let last_day = day_of(before_ms);
    let mut forgotten = 0;
    for kind in IndexedKind::ALL {
        let prefix = index_prefix(tenant, kind);
        let index = stores.for_key(&prefix);
        let mut after: Option<String> = None;
        loop {
            let next = index.list_page(&prefix, after.as_deref(), 1).await?;
            let Some(first) = next.objects.first() else {
                break;
            };
            let Some(day) = first.key[prefix.len()..].split('/').next() else {
                break;
            };
            if !is_day(day) || day > last_day.as_str() {
                break;
            }
            let named = format!("{prefix}{day}/{subject}/");
            let exact = asset.map(|asset| format!("{named}{asset}"));
            let mut entries = std::pin::pin!(index.list_all(&named));
            let mut old = Vec::new();
            while let Some(entry) = entries.next().await {
                let entry = entry?;
                let in_scope = exact.as_ref().is_none_or(|exact| *exact == entry.key);
                if in_scope && super::erase::doomed(index, before_ms, &entry).await? {
                    old.push(entry.key);
                }
            }
            index.delete_many(&old).await?;
            forgotten += old.len() as u64;
            after = Some(format!("{prefix}{day}/{AFTER_EVERY_NAME}"));
        }
    }
    Ok(forgotten)
}
