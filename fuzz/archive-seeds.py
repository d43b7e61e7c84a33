"""Writes the seed archives of the `archive` fuzz target (fuzz/corpus/archive/) and the
regression input of the import's symlink escape (kept in the corpus, so every run replays it): tiny OCI-layout and
`docker save` tars, deterministic, trimmed to the end-of-archive marker. Run it from
anywhere with `python3 fuzz/archive-seeds.py`; it rewrites the same bytes every time.
"""

import hashlib
import io
import json
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus", "archive")
REGRESSIONS = os.path.join(HERE, "corpus", "archive")


def sha(b):
    return hashlib.sha256(b).hexdigest()


def js(v):
    return json.dumps(v, separators=(",", ":"), sort_keys=True).encode()


def tar(members):
    """A ustar archive of (name, bytes | ("dir",) | ("symlink", target)) members."""
    buf = io.BytesIO()
    t = tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT)
    for name, content in members:
        info = tarfile.TarInfo(name)
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if isinstance(content, tuple) and content[0] == "dir":
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            t.addfile(info)
        elif isinstance(content, tuple) and content[0] == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = content[1]
            info.mode = 0o777
            t.addfile(info)
        else:
            info.size = len(content)
            info.mode = 0o644
            t.addfile(info, io.BytesIO(content))
    end = t.offset
    t.fileobj = io.BytesIO()  # keep close() from padding the real buffer
    t.close()
    return buf.getvalue()[:end] + b"\0" * 1024


def layer(files):
    return tar([(n, c) for n, c in files])


def image_config(diff_ids, arch="amd64"):
    return js({
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + d for d in diff_ids]},
    })


def oci_image(arch, payload):
    """(manifest bytes, [(digest hex, bytes)]) of a one-layer image."""
    lay = layer([("hello.txt", payload)])
    cfg = image_config([sha(lay)], arch)
    manifest = js({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + sha(cfg), "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": "sha256:" + sha(lay), "size": len(lay)}],
    })
    return manifest, [(sha(cfg), cfg), (sha(lay), lay), (sha(manifest), manifest)]


def oci_layout(index_manifests, blobs):
    members = [
        ("oci-layout", js({"imageLayoutVersion": "1.0.0"})),
        ("index.json", js({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": index_manifests})),
        ("blobs", ("dir",)),
        ("blobs/sha256", ("dir",)),
    ]
    seen = set()
    for h, b in blobs:
        if h not in seen:
            seen.add(h)
            members.append(("blobs/sha256/" + h, b))
    return tar(members)


def docker_save(extra=()):
    lay = layer([("hello.txt", b"hi\n")])
    cfg = image_config([sha(lay)])
    manifest = js([{"Config": sha(cfg) + ".json", "RepoTags": ["fuzz:latest"],
                    "Layers": [sha(lay) + "/layer.tar"]}])
    return tar([
        (sha(lay), ("dir",)),
        (sha(lay) + "/layer.tar", lay),
        (sha(cfg) + ".json", cfg),
        ("manifest.json", manifest),
        *extra,
    ])


def write(path, data):
    assert len(data) < 64 * 1024, path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main():
    m, blobs = oci_image("amd64", b"hello\n")
    write(os.path.join(CORPUS, "oci-layout-image.tar"), oci_layout([{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + sha(m), "size": len(m),
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }], blobs))

    m2, blobs2 = oci_image("arm64", b"hello arm\n")
    index = js({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": "sha256:" + sha(m), "size": len(m),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": "sha256:" + sha(m2), "size": len(m2),
             "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    })
    write(os.path.join(CORPUS, "oci-layout-index-two-platforms.tar"), oci_layout([{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": "sha256:" + sha(index), "size": len(index),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }], blobs + blobs2 + [(sha(index), index)]))

    write(os.path.join(CORPUS, "docker-save.tar"), docker_save())
    write(os.path.join(CORPUS, "parent-dir-entry.tar"), tar([("../escaped.txt", b"hi")]))
    write(os.path.join(CORPUS, "not-an-image.tar"), tar([("hello.txt", b"hi")]))

    # A `docker save` archive whose `oci-layout` is a dangling symlink out of the
    # extraction directory: import takes the docker path (the layout "does not exist")
    # and then writes the layout marker through the symlink, beside the temporary
    # directory.
    write(os.path.join(REGRESSIONS, "regression-docker-symlink-escape.bin"),
          docker_save([("oci-layout", ("symlink", "../../escaped"))]))


if __name__ == "__main__":
    main()
