"""Cleanup rules of local repositories (tag retention): a repository's `cleanup` setting
(`{"keep_last": N, "matching": "regex", "untagged_after_days": D}`) is applied by every garbage collection
run (`POST /api/gc?wait=true`) before its mark. Removed tags leave tags/list, the manifests only they led to
answer 404, and blobs only those used leave the data dir; kept tags still pull (skopeo) with the same digests;
a repository without rules is untouched; bad rules are a 400 that changes nothing."""
import time

from harness.binaryrepo import ADMIN, basic
from harness.clients import dir_image, skopeo_copy
from harness.images import skopeo
from harness.oci import Oci, build_image, sha256, tar_gz_layer
from harness.util import request

LOCAL, PLAIN = "docker-local", "docker-plain"
RULES = {"keep_last": 2, "matching": "^v\\d+$"}


def gc_all(br) -> dict:
    r = request("POST", f"{br.url}/api/gc?wait=true&grace_seconds=0", headers={"Authorization": basic(*ADMIN)},
                timeout=300)
    assert r.status == 200, f"POST /api/gc -> {r!r}\n{br.log_tail(20)}"
    return r.json()


def files_present(br, digests):
    return {d for d in digests if br.blob_path(d).is_file()}


def tags(oci, image):
    r = oci.tags(image)
    assert r.status == 200, r
    return sorted(r.json()["tags"])


def set_rules(br, name, rules):
    return br.api("PUT", f"/api/repositories/{name}", json_body={"type": "local", "format": "docker", "cleanup": rules})


def push_tags(br, images, small):
    """Pushes `dev` first, then v3, v1, v5 (skopeo), v2, v4 a second apart, to both repositories: the push
    order, not the names, says which tags are newest. Every image shares one layer."""
    shared = tar_gz_layer(40000, "cleanup-shared")
    built = {tag: build_image(f"cleanup-{tag}", layer_sizes=(30000,), shared_layers=[shared])
             for tag in ("dev", "v3", "v1", "v2", "v4")}
    pushed = {}
    for tag in ("dev", "v3", "v1", "v5", "v2", "v4"):
        for repo in (LOCAL, PLAIN):
            if tag == "v5":
                skopeo("copy", "--dest-tls-verify=false", f"oci:{small.layout}:{small.tag}",
                       f"docker://{br.prefix(repo)}/e2e/app:v5")
            else:
                r = Oci(br.url, repo).push_image("e2e/app", built[tag], tag=tag)
                assert r.status == 201, r
        if tag == "v5":
            pushed[tag] = (small.digest, set(small.blobs) | {small.digest})
        else:
            b = built[tag]
            pushed[tag] = (b.digest, set(b.blobs) | {b.digest})
        time.sleep(1.1)  # push times are kept in seconds
    return pushed, sha256(shared[0])


def test_keep_last_keeps_the_newest_matching_tags(local_br, images, tmp_path):
    br = local_br
    br.create_local(PLAIN)
    oci, plain = Oci(br.url, LOCAL), Oci(br.url, PLAIN)
    pushed, shared = push_tags(br, images, images["small"])
    everything = set().union(*(blobs for _, blobs in pushed.values()))
    assert tags(oci, "e2e/app") == ["dev", "v1", "v2", "v3", "v4", "v5"]

    r = set_rules(br, LOCAL, RULES)
    assert r.status == 200 and r.json()["cleanup"] == RULES, r
    assert [x for x in br.repos() if x["name"] == LOCAL][0]["cleanup"] == RULES

    res = gc_all(br)
    assert res["state"] == "finished" and res["tags_removed"] == 3 and res["manifests_removed"] == 3, res
    # the two most recently pushed v-tags stay, and dev, which the pattern does not select
    assert tags(oci, "e2e/app") == ["dev", "v2", "v4"]
    gone = {t: pushed[t] for t in ("v1", "v3", "v5")}
    kept = {t: pushed[t] for t in ("dev", "v2", "v4")}
    kept_blobs = set().union(*(b for _, b in kept.values()))
    for tag, (digest, blobs) in gone.items():
        assert oci.get_manifest("e2e/app", digest).status == 404, f"{tag}'s manifest is still served"
        assert oci.get_manifest("e2e/app", tag).status == 404
        only = blobs - kept_blobs
        # the other repository still holds the same blobs: they stay in the store (it is shared)
        assert files_present(br, only) == only
    assert shared in kept_blobs and br.blob_path(shared).is_file()
    for tag, (digest, blobs) in kept.items():
        skopeo_copy(f"{br.prefix(LOCAL)}/e2e/app:{tag}", tmp_path / tag)
        got_digest, got_blobs = dir_image(tmp_path / tag)
        assert got_digest == digest and set(got_blobs) == blobs - {digest}, tag

    # the repository without rules is untouched
    assert tags(plain, "e2e/app") == ["dev", "v1", "v2", "v3", "v4", "v5"]
    skopeo_copy(f"{br.prefix(PLAIN)}/e2e/app:v5", tmp_path / "plain-v5")
    assert dir_image(tmp_path / "plain-v5") == (images["small"].digest, images["small"].blobs)

    # once the other repository lets go too, the blobs only the removed tags used leave the store
    assert br.api("DELETE", f"/api/repositories/{PLAIN}").status == 204
    res = gc_all(br)
    removed_only = set().union(*(b for _, b in gone.values())) - kept_blobs
    assert files_present(br, removed_only) == set(), f"still stored: {files_present(br, removed_only)}"
    assert files_present(br, kept_blobs) == kept_blobs
    for digest, blobs in gone.values():
        for d in blobs - kept_blobs - {digest}:
            assert oci.head_blob("e2e/app", d).status == 404
    assert files_present(br, everything - removed_only) == everything - removed_only
    again = gc_all(br)
    assert again["tags_removed"] == 0 and again["manifests_removed"] == 0 and again["removed"] == 0, again


def test_untagged_manifests_go_after_the_delay(local_br, images, tmp_path):
    br = local_br
    oci = Oci(br.url, LOCAL)
    multi = images["multi"]
    # an index pushed by tag: its platform manifests are untagged, and stay with it
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{multi.layout}:{multi.tag}",
           f"docker://{br.prefix(LOCAL)}/e2e/multi:1")
    old = build_image("cleanup-untagged-old", layer_sizes=(20000,))
    assert oci.push_image("e2e/loose", old).status == 201  # by digest only
    tagged = build_image("cleanup-tagged", layer_sizes=(20000,))
    assert oci.push_image("e2e/loose", tagged, tag="1").status == 201
    # 0.00003 days is about 2.6 seconds: fractions of a day are accepted
    r = set_rules(br, LOCAL, {"untagged_after_days": 0.00003})
    assert r.status == 200 and r.json()["cleanup"] == {"untagged_after_days": 0.00003}, r
    time.sleep(3.5)
    young = build_image("cleanup-untagged-young", layer_sizes=(20000,))
    assert oci.push_image("e2e/loose", young).status == 201

    res = gc_all(br)
    assert res["tags_removed"] == 0 and res["manifests_removed"] == 1, res
    assert oci.get_manifest("e2e/loose", old.digest).status == 404
    old_blobs = set(old.blobs) | {old.digest}
    assert files_present(br, old_blobs) == set(), f"still stored: {files_present(br, old_blobs)}"
    assert oci.get_manifest("e2e/loose", young.digest).body == young.manifest
    assert oci.get_manifest("e2e/loose", "1").body == tagged.manifest
    for platform in ("linux/amd64", "linux/arm64"):
        p = multi.platforms[platform]
        skopeo_copy(f"{br.prefix(LOCAL)}/e2e/multi@{p['digest']}", tmp_path / platform.replace("/", "-"))
        assert dir_image(tmp_path / platform.replace("/", "-")) == (p["digest"], p["blobs"])


def test_bad_rules_are_refused_and_change_nothing(local_br, upstream):
    br = local_br
    br.create_remote("docker-remote", upstream.url)
    br.create_virtual("docker-all", [LOCAL])
    assert set_rules(br, LOCAL, RULES).status == 200
    for bad, says in [
        ({"keep_last": 2, "matching": "v(("}, "regular expression"),
        ({"keep_last": 2, "matching": "a{1000}{1000}"}, "regular expression"),
        ({"keep_last": 2, "matching": "x" * 300}, "256"),
        ({"matching": "^v"}, "keep_last"),
        ({"keep_last": -1}, "keep_last"),
        ({"keep_last": "3"}, "keep_last"),
        ({"untagged_after_days": -1}, "untagged_after_days"),
        ({"keep_lats": 2}, "keep_lats"),
    ]:
        r = set_rules(br, LOCAL, bad)
        assert r.status == 400 and says in r.text(), f"{bad} -> {r!r}"
    for name, body in [("docker-remote", {"type": "remote", "format": "docker", "url": upstream.url}),
                       ("docker-all", {"type": "virtual", "format": "docker", "members": [LOCAL]})]:
        r = br.api("PUT", f"/api/repositories/{name}", json_body={**body, "cleanup": RULES})
        assert r.status == 400 and "only applies to local repositories" in r.text(), r
    # only an administrator sets rules
    r = br.api("PUT", f"/api/repositories/{LOCAL}", json_body={"type": "local", "format": "docker",
                                                               "cleanup": {"keep_last": 0}}, auth=None)
    assert r.status == 401, r
    repos = {x["name"]: x for x in br.repos()}
    assert repos[LOCAL]["cleanup"] == RULES
    assert "cleanup" not in repos["docker-remote"] and "cleanup" not in repos["docker-all"]

    # the rules survive a restart (repositories.json)
    br.restart()
    assert {x["name"]: x for x in br.repos()}[LOCAL]["cleanup"] == RULES
