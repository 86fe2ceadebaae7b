"""Concurrent cold pulls share one upstream fetch per blob."""
from concurrent.futures import ThreadPoolExecutor

from harness.clients import dir_image, skopeo_copy
from harness.util import wait_until

N = 10


def test_concurrent_cold_pulls_fetch_each_blob_once(upstream, br, images, tmp_path):
    big = images["big"]
    br.create_remote("docker-remote", upstream.url)
    m0 = upstream.mark()

    def one(i):
        dest = tmp_path / f"pull{i}"
        p = skopeo_copy(big.ref(br.prefix("docker-remote")), dest, check=False, timeout=600)
        if p.returncode != 0:
            return f"pull {i} failed: {p.stderr.decode()[-800:]}"
        got = dir_image(dest)
        if got != (big.digest, big.blobs):
            return f"pull {i}: got {got}"
        return None

    with ThreadPoolExecutor(N) as ex:
        errors = [e for e in ex.map(one, range(N)) if e]
    assert errors == [], "\n".join(errors)
    st = upstream.stats(m0)
    gets = st.blob_gets(status=None)
    assert gets == {d: [s] for d, s in big.blobs.items()}, \
        f"each blob should be fetched upstream exactly once (digest: sizes of each GET):\n{gets}\n{st.summary()}"
    assert st.body_bytes("blob") == big.total_bytes

    # binaryrepo's own metrics say the same: one fill per blob, all stored, and exactly the bytes and requests
    # the upstream's access log shows (a fill is counted once it is committed, which may follow its clients)
    wait_until(lambda: br.metrics().value("binaryrepo_upstream_fills_total", repository="docker-remote") >= len(big.blobs),
               timeout=60, what="every fill to be committed")
    m = br.metrics()
    assert m.value("binaryrepo_blob_fetches_total", repository="docker-remote", result="started") == len(big.blobs), m.text
    assert m.value("binaryrepo_upstream_fills_total", repository="docker-remote", outcome="stored") == len(big.blobs)
    assert m.value("binaryrepo_upstream_fills_total", outcome="failed") == 0
    # every fetch-blob plan either started a fill, joined one in flight or found the blob stored meanwhile
    assert m.value("binaryrepo_blob_fetches_total", repository="docker-remote") \
        == m.value("binaryrepo_plans_total", repository="docker-remote", plan="fetch-blob") > len(big.blobs), m.text
    assert m.value("binaryrepo_upstream_body_bytes_total", repository="docker-remote") == st.body_bytes(), \
        f"upstream body bytes by binaryrepo's count vs the upstream's log\n{st.summary()}"
    assert m.value("binaryrepo_upstream_requests_total", repository="docker-remote") == len(st.entries), st.summary()
    assert m.value("binaryrepo_upstream_requests_total", repository="docker-remote", method="GET", status=200) \
        == st.count(method="GET", status=200)
