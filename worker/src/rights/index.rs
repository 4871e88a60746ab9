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

use crate::store::{Origin, RegionStores, StoreError, PAGE};

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
/// included, even past midnight: days up to today are read), and keeps those written
/// for what came after it. Returns how many. Reads two listings per day the index
/// holds, never the entries of other subjects, and holds at most a page of keys.
pub async fn forget(
    stores: &RegionStores,
    tenant: &TenantId,
    subject: &str,
    asset: Option<&str>,
    before_ms: Millis,
) -> Result<u64, StoreError> {
    let last_day = day_of(before_ms.max(now_millis()));
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
                if old.len() == PAGE {
                    index.delete_many(&old).await?;
                    forgotten += old.len() as u64;
                    old.clear();
                }
            }
            index.delete_many(&old).await?;
            forgotten += old.len() as u64;
            after = Some(format!("{prefix}{day}/{AFTER_EVERY_NAME}"));
        }
    }
    Ok(forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use locality_proto::RegionId;

    const DAY_MS: Millis = 86_400_000;

    #[tokio::test]
    async fn forgetting_reads_the_days_after_the_request_and_deletes_more_than_a_page() {
        let directory = tempfile::tempdir().unwrap();
        let store = crate::store::RegionStore::from_url(
            RegionId::new("eu").unwrap(),
            &format!("file://{}", directory.path().display()),
            &Default::default(),
        )
        .unwrap();
        let stores = RegionStores::single(store);
        let tenant = TenantId::new("acme").unwrap();
        let requested_ms = now_millis() - DAY_MS;
        let output = |asset: usize| format!("acme/subjects/alice/assets/a{asset:05}/outputs/t.jpg");
        // Jobs begun before the request that wrote after midnight: their entries fall on
        // a day after the request's, and must go like the objects.
        let begun_before = Origin {
            at_ms: requested_ms - 60_000,
            job: None,
        };
        let doomed: Vec<String> = (0..PAGE + 1).map(output).collect();
        note_written(
            &stores,
            &tenant,
            doomed.iter().map(String::as_str),
            now_millis(),
            &begun_before,
        )
        .await
        .unwrap();
        let after = Origin {
            at_ms: requested_ms + 60_000,
            job: None,
        };
        let kept = output(PAGE + 1);
        note_written(&stores, &tenant, [kept.as_str()], now_millis(), &after)
            .await
            .unwrap();

        let forgotten = forget(&stores, &tenant, "alice", None, requested_ms)
            .await
            .unwrap();

        assert_eq!(forgotten, PAGE as u64 + 1);
        let prefix = index_prefix(&tenant, IndexedKind::ALL[0]);
        let left: Vec<String> = stores
            .own()
            .list_all(&prefix)
            .map(|listed| listed.unwrap().key)
            .collect()
            .await;
        let today = day_of(now_millis());
        assert_eq!(
            left,
            vec![format!("{prefix}{today}/alice/a{:05}", PAGE + 1)],
            "only the entry of the job begun after the request is left"
        );
    }
}
