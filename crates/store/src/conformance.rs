//! The storage-backend conformance suite. Every backend's tests call [`run_all`] on a
//! fresh, empty store; a backend is done when it passes unchanged. The suite only uses
//! the public traits, so it states the contract the registry core relies on.

use crate::{Entry, Key, Store, StoreError, UploadId};
use bytes::Bytes;
use futures::StreamExt;

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

async fn collect(s: crate::ByteStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut s = s;
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

fn chunks(parts: &[&'static [u8]]) -> crate::ByteStream {
    futures::stream::iter(
        parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p)))
            .collect::<Vec<_>>(),
    )
    .boxed()
}

/// Run every check against `store`, which must start empty. Panics on the first failure.
pub async fn run_all(store: &dyn Store) {
    objects(store).await;
    ranges(store).await;
    listing(store).await;
    uploads(store).await;
    failed_append_is_all_or_nothing(store).await;
    racing_appends(store).await;
    commit_while_appending(store).await;
    large_object(store).await;
    uneven_appends(store).await;
    put_stream_is_all_or_nothing(store).await;
    touch_and_walk(store).await;
    leases(store).await;
}

async fn leases(s: &dyn Store) {
    let name = format!("t-{}", UploadId::random().as_str());
    let long = std::time::Duration::from_secs(60);
    assert!(s.acquire_lease(&name, "a", long).await.unwrap());
    assert!(
        !s.acquire_lease(&name, "b", long).await.unwrap(),
        "a held lease is refused to others"
    );
    assert!(
        s.acquire_lease(&name, "a", long).await.unwrap(),
        "the holder renews"
    );
    s.release_lease(&name, "b").await.unwrap();
    assert!(
        !s.acquire_lease(&name, "b", long).await.unwrap(),
        "only the holder releases"
    );
    s.release_lease(&name, "a").await.unwrap();
    assert!(
        s.acquire_lease(&name, "b", std::time::Duration::ZERO)
            .await
            .unwrap()
    );
    assert!(
        s.acquire_lease(&name, "c", long).await.unwrap(),
        "an expired lease is taken over"
    );
    s.release_lease(&name, "c").await.unwrap();
}

async fn touch_and_walk(s: &dyn Store) {
    let a = key("t/walk/a");
    let deep = key("t/walk/d/e/f");
    assert!(
        !s.touch(&a).await.unwrap(),
        "touching nothing reports false"
    );
    assert!(s.stat(&a).await.unwrap().is_none(), "touch never creates");
    s.put(&a, Bytes::from_static(b"aa")).await.unwrap();
    s.put(&deep, Bytes::from_static(b"fff")).await.unwrap();
    let before = s.stat(&a).await.unwrap().unwrap().modified;
    // Object stores keep modification times to the second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(s.touch(&a).await.unwrap());
    let after = s.stat(&a).await.unwrap().unwrap();
    assert!(after.modified > before, "touch moves the modification time");
    assert_eq!(after.size, 2, "touch keeps the bytes");
    assert_eq!(s.get(&a).await.unwrap().unwrap(), Bytes::from_static(b"aa"));

    let walked = crate::walk_sorted(s, &key("t/walk")).await.unwrap();
    let names: Vec<(&str, u64)> = walked.iter().map(|(n, m)| (n.as_str(), m.size)).collect();
    assert_eq!(names, [("a", 2), ("d/e/f", 3)]);
    assert!(
        crate::walk_sorted(s, &key("t/nowhere"))
            .await
            .unwrap()
            .is_empty()
    );
    // a deleted object leaves no folder behind in listings
    s.delete(&deep).await.unwrap();
    assert_eq!(
        s.list(&key("t/walk")).await.unwrap(),
        vec![Entry::Object("a".into())]
    );
    // and writing under a pruned folder works again
    s.put(&deep, Bytes::from_static(b"f")).await.unwrap();
    assert_eq!(
        crate::walk_sorted(s, &key("t/walk")).await.unwrap().len(),
        2
    );
    s.delete(&deep).await.unwrap();
    s.delete(&a).await.unwrap();
    walk_keeps_folders_whole(s).await;
    get_many_answers_in_order(s).await;
}

/// `get_many` answers each key in the order asked, `None` for absent ones.
async fn get_many_answers_in_order(s: &dyn Store) {
    let (a, b, gone) = (key("t/many/a"), key("t/many/b"), key("t/many/gone"));
    s.put(&a, Bytes::from_static(b"A")).await.unwrap();
    s.put(&b, Bytes::from_static(b"BB")).await.unwrap();
    let got = s
        .get_many(&[b.clone(), gone.clone(), a.clone()])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            Some(Bytes::from_static(b"BB")),
            None,
            Some(Bytes::from_static(b"A"))
        ]
    );
    assert!(s.get_many(&[]).await.unwrap().is_empty());
    s.delete(&a).await.unwrap();
    s.delete(&b).await.unwrap();
}

/// A walk yields each folder whole (what GC's per-repository grouping relies on), with
/// names that sort around the folder's (`b-c`, `b.d` sort before `b/` byte-wise, after
/// it by component), and a walk dropped part way ends quietly.
async fn walk_keeps_folders_whole(s: &dyn Store) {
    use futures::StreamExt;
    let names = ["a", "b/x", "b/y/z", "b-c", "b.d/e", "b0", "c"];
    for n in names {
        s.put(&key(&format!("t/order/{n}")), Bytes::from_static(b"o"))
            .await
            .unwrap();
    }
    let walked: Vec<String> = s
        .walk(&key("t/order"))
        .await
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect()
        .await;
    let mut sorted = walked.clone();
    sorted.sort();
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(sorted, expected, "every object, once");
    let in_b: Vec<usize> = walked
        .iter()
        .enumerate()
        .filter(|(_, n)| n.starts_with("b/"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(in_b.len(), 2);
    assert_eq!(
        in_b[1],
        in_b[0] + 1,
        "folder b/ comes out whole: {walked:?}"
    );
    let mut partial = s.walk(&key("t/order")).await.unwrap();
    assert!(partial.next().await.unwrap().is_ok());
    drop(partial);
    for n in names {
        s.delete(&key(&format!("t/order/{n}"))).await.unwrap();
    }
}

async fn objects(s: &dyn Store) {
    let k = key("t/objects/a");
    assert!(
        s.stat(&k).await.unwrap().is_none(),
        "absent object has no stat"
    );
    assert!(s.get(&k).await.unwrap().is_none());
    assert!(matches!(s.read(&k, 0..0).await, Err(StoreError::NotFound)));
    s.put(&k, Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(s.stat(&k).await.unwrap().unwrap().size, 5);
    assert_eq!(
        s.get(&k).await.unwrap().unwrap(),
        Bytes::from_static(b"hello")
    );
    s.put(&k, Bytes::from_static(b"replaced")).await.unwrap();
    assert_eq!(
        s.get(&k).await.unwrap().unwrap(),
        Bytes::from_static(b"replaced")
    );
    assert!(s.delete(&k).await.unwrap());
    assert!(
        !s.delete(&k).await.unwrap(),
        "second delete reports nothing deleted"
    );
    assert!(s.get(&k).await.unwrap().is_none());
    // an empty object is still an object
    s.put(&k, Bytes::new()).await.unwrap();
    assert_eq!(s.stat(&k).await.unwrap().unwrap().size, 0);
    s.delete(&k).await.unwrap();
}

async fn ranges(s: &dyn Store) {
    let k = key("t/ranges/r");
    s.put(&k, Bytes::from_static(b"0123456789")).await.unwrap();
    assert_eq!(
        collect(s.read(&k, 0..10).await.unwrap()).await.unwrap(),
        b"0123456789"
    );
    assert_eq!(
        collect(s.read(&k, 3..7).await.unwrap()).await.unwrap(),
        b"3456"
    );
    assert_eq!(
        collect(s.read(&k, 10..10).await.unwrap()).await.unwrap(),
        b""
    );
    assert!(matches!(
        s.read(&k, 5..11).await,
        Err(StoreError::InvalidRange { size: 10, .. })
    ));
    assert!(matches!(
        s.read(&k, 11..12).await,
        Err(StoreError::InvalidRange { .. })
    ));
}

async fn listing(s: &dyn Store) {
    for k in [
        "t/list/b",
        "t/list/a",
        "t/list/d/x",
        "t/list/d/y/z",
        "t/listother",
    ] {
        s.put(&key(k), Bytes::from_static(b"x")).await.unwrap();
    }
    assert_eq!(
        s.list(&key("t/list")).await.unwrap(),
        vec![
            Entry::Object("a".into()),
            Entry::Object("b".into()),
            Entry::Prefix("d".into())
        ]
    );
    assert_eq!(
        s.list(&key("t/list/d")).await.unwrap(),
        vec![Entry::Object("x".into()), Entry::Prefix("y".into())]
    );
    assert!(s.list(&key("t/nothing")).await.unwrap().is_empty());
}

async fn uploads(s: &dyn Store) {
    let id = UploadId::random();
    assert!(s.upload_stat(&id).await.unwrap().is_none());
    assert!(matches!(
        s.upload_append(&id, 0, chunks(&[b"x"])).await,
        Err(StoreError::NotFound)
    ));
    s.upload_create(&id).await.unwrap();
    assert_eq!(s.upload_stat(&id).await.unwrap().unwrap().size, 0);
    assert_eq!(
        s.upload_append(&id, 0, chunks(&[b"ab", b"cd"]))
            .await
            .unwrap(),
        4
    );
    assert!(matches!(
        s.upload_append(&id, 2, chunks(&[b"zz"])).await,
        Err(StoreError::OffsetMismatch { current: 4 })
    ));
    assert_eq!(s.upload_append(&id, 4, chunks(&[b"ef"])).await.unwrap(), 6);
    assert_eq!(
        collect(s.upload_read(&id, None).await.unwrap())
            .await
            .unwrap(),
        b"abcdef"
    );
    assert_eq!(
        s.upload_list()
            .await
            .unwrap()
            .iter()
            .filter(|(u, _)| *u == id)
            .count(),
        1
    );
    assert_eq!(
        collect(s.upload_read(&id, Some(2..5)).await.unwrap())
            .await
            .unwrap(),
        b"cde"
    );
    assert!(matches!(
        s.upload_read(&id, Some(4..7)).await,
        Err(StoreError::InvalidRange { .. })
    ));
    let dest = key("t/uploads/done");
    assert!(
        s.stat(&dest).await.unwrap().is_none(),
        "nothing visible before commit"
    );
    assert!(
        matches!(
            s.upload_commit(&id, &dest, 5).await,
            Err(StoreError::OffsetMismatch { current: 6 })
        ),
        "a commit is conditional on the size the caller verified"
    );
    assert!(s.stat(&dest).await.unwrap().is_none());
    s.upload_commit(&id, &dest, 6).await.unwrap();
    assert_eq!(
        s.get(&dest).await.unwrap().unwrap(),
        Bytes::from_static(b"abcdef")
    );
    assert!(
        s.upload_stat(&id).await.unwrap().is_none(),
        "commit forgets the upload"
    );
    assert!(matches!(
        s.upload_commit(&id, &dest, 6).await,
        Err(StoreError::NotFound)
    ));

    let id2 = UploadId::random();
    s.upload_create(&id2).await.unwrap();
    s.upload_append(&id2, 0, chunks(&[b"zz"])).await.unwrap();
    assert!(s.upload_abort(&id2).await.unwrap());
    assert!(!s.upload_abort(&id2).await.unwrap());
    assert!(
        s.upload_list()
            .await
            .unwrap()
            .iter()
            .all(|(u, _)| *u != id2)
    );
}

async fn failed_append_is_all_or_nothing(s: &dyn Store) {
    let id = UploadId::random();
    s.upload_create(&id).await.unwrap();
    s.upload_append(&id, 0, chunks(&[b"keep"])).await.unwrap();
    let broken = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"lost")),
        Err(std::io::Error::other("client went away")),
    ])
    .boxed();
    assert!(s.upload_append(&id, 4, broken).await.is_err());
    assert_eq!(s.upload_stat(&id).await.unwrap().unwrap().size, 4);
    assert_eq!(
        collect(s.upload_read(&id, None).await.unwrap())
            .await
            .unwrap(),
        b"keep"
    );
    s.upload_abort(&id).await.unwrap();
}

/// A body that sends `first`, tells `started`, waits for `gate`, then sends `second`:
/// an append caught in the middle of its body (also for the registry's own race tests).
pub fn gated(
    first: &'static [u8],
    second: &'static [u8],
    started: std::sync::Arc<tokio::sync::Notify>,
    gate: std::sync::Arc<tokio::sync::Notify>,
) -> crate::ByteStream {
    futures::stream::unfold(0u8, move |step| {
        let (started, gate) = (started.clone(), gate.clone());
        async move {
            match step {
                0 => {
                    started.notify_one();
                    Some((Ok(Bytes::from_static(first)), 1))
                }
                1 => {
                    gate.notified().await;
                    Some((Ok(Bytes::from_static(second)), 2))
                }
                _ => None,
            }
        }
    })
    .boxed()
}

/// Two appends at the same offset, the second sent whole while the first is mid-body:
/// exactly one succeeds and the upload holds exactly its bytes.
async fn racing_appends(s: &dyn Store) {
    let id = UploadId::random();
    s.upload_create(&id).await.unwrap();
    let (started, gate) = (
        std::sync::Arc::new(tokio::sync::Notify::new()),
        std::sync::Arc::new(tokio::sync::Notify::new()),
    );
    let slow = s.upload_append(
        &id,
        0,
        gated(b"aaaa", b"AAAA", started.clone(), gate.clone()),
    );
    let fast = async {
        started.notified().await;
        let r = s.upload_append(&id, 0, chunks(&[b"bbbbbbbb"])).await;
        gate.notify_one();
        r
    };
    let (a, b) = futures::join!(slow, fast);
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one of two appends at one offset succeeds: {a:?} / {b:?}"
    );
    let loser = if a.is_ok() { &b } else { &a };
    assert!(
        matches!(loser, Err(StoreError::OffsetMismatch { .. })),
        "{loser:?}"
    );
    let winner: &[u8] = if a.is_ok() { b"aaaaAAAA" } else { b"bbbbbbbb" };
    assert_eq!(
        collect(s.upload_read(&id, None).await.unwrap())
            .await
            .unwrap(),
        winner
    );
    s.upload_abort(&id).await.unwrap();
}

/// A commit while an append is mid-body: one of them wins, and a published object
/// holds exactly the bytes the commit was asked for and never changes after.
async fn commit_while_appending(s: &dyn Store) {
    let id = UploadId::random();
    s.upload_create(&id).await.unwrap();
    s.upload_append(&id, 0, chunks(&[b"base"])).await.unwrap();
    let dest = key("t/racing/commit");
    let (started, gate) = (
        std::sync::Arc::new(tokio::sync::Notify::new()),
        std::sync::Arc::new(tokio::sync::Notify::new()),
    );
    let append = s.upload_append(
        &id,
        4,
        gated(b"more", b"MORE", started.clone(), gate.clone()),
    );
    let commit = async {
        started.notified().await;
        // A backend may hold the commit until the append ends: open the gate meanwhile.
        let open = async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            gate.notify_one();
        };
        futures::join!(s.upload_commit(&id, &dest, 4), open).0
    };
    let (a, c) = futures::join!(append, commit);
    assert!(
        a.is_ok() != c.is_ok(),
        "an append and a commit racing: exactly one wins: {a:?} / {c:?}"
    );
    if c.is_ok() {
        assert!(
            matches!(a, Err(StoreError::NotFound)),
            "an append that lost to a commit finds the upload ended: {a:?}"
        );
        assert_eq!(
            s.get(&dest).await.unwrap().unwrap(),
            Bytes::from_static(b"base")
        );
        assert!(s.upload_stat(&id).await.unwrap().is_none());
    } else {
        assert!(matches!(c, Err(StoreError::OffsetMismatch { current: 12 })));
        assert!(s.stat(&dest).await.unwrap().is_none());
        assert_eq!(s.upload_stat(&id).await.unwrap().unwrap().size, 12);
        s.upload_abort(&id).await.unwrap();
    }
    // Whatever happened, a late append changes nothing published.
    let late = s.upload_append(&id, 4, chunks(&[b"late"])).await;
    assert!(late.is_err(), "{late:?}");
    if c.is_ok() {
        assert_eq!(
            s.get(&dest).await.unwrap().unwrap(),
            Bytes::from_static(b"base")
        );
    }
}

async fn large_object(s: &dyn Store) {
    // Several MiB in uneven chunks, read back whole and by range.
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let id = UploadId::random();
    s.upload_create(&id).await.unwrap();
    let parts: Vec<std::io::Result<Bytes>> = data
        .chunks(333_333)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let n = s
        .upload_append(&id, 0, futures::stream::iter(parts).boxed())
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    let k = key("t/large/blob");
    s.upload_commit(&id, &k, n).await.unwrap();
    assert_eq!(
        collect(s.read(&k, 0..n).await.unwrap()).await.unwrap(),
        data
    );
    assert_eq!(
        collect(s.read(&k, 1_234_567..4_000_001).await.unwrap())
            .await
            .unwrap(),
        &data[1_234_567..4_000_001]
    );
}

/// Appends of sizes that start and end anywhere (one byte, either side of 4 KiB, past
/// several MiB), each read back whole; a failed append far into its body leaves exactly
/// what came before. (The filesystem store's direct writes rewrite the block an earlier
/// append ended in, and gather MiB before writing: this is what they must not break.)
async fn uneven_appends(s: &dyn Store) {
    let id = UploadId::random();
    s.upload_create(&id).await.unwrap();
    let mut expected: Vec<u8> = Vec::new();
    for (i, size) in [1usize, 4095, 4097, 4_200_000, 3, 4_300_000]
        .into_iter()
        .enumerate()
    {
        let part: Vec<u8> = (0..size).map(|j| ((i * 7 + j) % 253) as u8).collect();
        let pieces: Vec<std::io::Result<Bytes>> = part
            .chunks(65_537)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let offset = expected.len() as u64;
        let end = s
            .upload_append(&id, offset, futures::stream::iter(pieces).boxed())
            .await
            .unwrap();
        expected.extend_from_slice(&part);
        assert_eq!(
            end,
            expected.len() as u64,
            "append {i} ends where its bytes do"
        );
        let back = collect(s.upload_read(&id, None).await.unwrap())
            .await
            .unwrap();
        assert!(
            back == expected,
            "after append {i} of {size} bytes the upload reads back as written"
        );
    }
    let broken = futures::stream::iter(vec![
        Ok(Bytes::from(vec![9u8; 5_000_000])),
        Err(std::io::Error::other("client went away")),
    ])
    .boxed();
    assert!(
        s.upload_append(&id, expected.len() as u64, broken)
            .await
            .is_err()
    );
    assert_eq!(
        s.upload_stat(&id).await.unwrap().unwrap().size,
        expected.len() as u64
    );
    let k = key("t/uneven/blob");
    s.upload_commit(&id, &k, expected.len() as u64)
        .await
        .unwrap();
    let back = collect(s.read(&k, 0..expected.len() as u64).await.unwrap())
        .await
        .unwrap();
    assert!(
        back == expected,
        "the committed object holds every append and nothing of the failed one"
    );
}

/// `put_stream` publishes the whole stream or nothing: a stream that fails, small or
/// past several parts, leaves no object (and an older one under the key untouched), and
/// no upload behind; one that ends is read back whole and by ranges across its parts.
async fn put_stream_is_all_or_nothing(s: &dyn Store) {
    let small = key("t/stream/small");
    assert_eq!(
        s.put_stream(&small, chunks(&[b"ab", b"c"])).await.unwrap(),
        3
    );
    assert_eq!(s.get(&small).await.unwrap().unwrap(), &b"abc"[..]);

    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 253) as u8).collect();
    let failing = |upto: usize| {
        let mut parts: Vec<std::io::Result<Bytes>> = data[..upto]
            .chunks(1_000_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        parts.push(Err(std::io::Error::other("cut off")));
        futures::stream::iter(parts).boxed()
    };
    let uploads_before = s.upload_list().await.unwrap().len();
    let large = key("t/stream/large");
    for upto in [0, 3_000_000, 17_000_000] {
        assert!(s.put_stream(&large, failing(upto)).await.is_err());
        assert!(s.stat(&large).await.unwrap().is_none(), "cut at {upto}");
        // Over an existing object, a failed stream changes nothing.
        assert!(s.put_stream(&small, failing(upto)).await.is_err());
        assert_eq!(s.get(&small).await.unwrap().unwrap(), &b"abc"[..]);
    }
    assert_eq!(s.upload_list().await.unwrap().len(), uploads_before);

    let whole: Vec<std::io::Result<Bytes>> = data
        .chunks(777_777)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let n = s
        .put_stream(&large, futures::stream::iter(whole).boxed())
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(s.stat(&large).await.unwrap().unwrap().size, n);
    assert_eq!(
        collect(s.read(&large, 0..n).await.unwrap()).await.unwrap(),
        data
    );
    for r in [1..19_999_999, 4_194_303..12_582_913, 8_388_608..20_000_000] {
        assert_eq!(
            collect(s.read(&large, r.start..r.end).await.unwrap())
                .await
                .unwrap(),
            &data[r.start as usize..r.end as usize],
            "range {r:?}"
        );
    }
}
