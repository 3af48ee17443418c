"""The Magic3D engine on a tiny prior: both stages run and resume, the fine stage renders at 4x and
moves the geometry, the textured mesh exports (OBJ + MTL + PNG, GLB with its texture) with a
texture that holds the field's colours, eval tables both stages, bad settings are named."""

import json
import os

import numpy as np
import pytest
import torch

from pyengine.cli import main
from pyengine.engines import image_prior as ip
from pyengine.engines import magic3d as M
from tests.engines.test_sds import TINY as SDS_TINY
from tests.engines.test_sds import tiny_prior

COARSE = {k: v for k, v in SDS_TINY.items() if k not in ("iterations", "checkpoint_every", "progress")}
COARSE.update(turntable_frames=0, mesh_formats=[], blob_density=20.0)
TINY = dict(coarse_iterations=3, coarse=COARSE, fine_iterations=3, tet_resolution=10, density_threshold=5.0,
            texture_size=32, turntable_frames=2, turntable_size=24, eval_views=2, checkpoint_every=0, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("prior") / "prior.safetensors")
    ip.save_prior_file(tiny_prior(), path)
    return path


def tiny_cfg(tmp_path, prior_file, **kw):
    return M.Magic3DConfig(**{**TINY, "prior": prior_file, "out": str(tmp_path / "run"), **kw})


def test_both_stages_run_and_write_a_textured_mesh(tmp_path, prior_file):
    import trimesh

    res = M.run(tiny_cfg(tmp_path, prior_file, texture_iterations=2))
    out = tmp_path / "run"
    assert res["fine_size"] == 4 * res["coarse_size"] == 64
    assert res["fine_iterations"] == 5 and res["mesh_faces"] > 0
    for name in ("mesh.obj", "mesh.mtl", "mesh.png", "mesh.glb", "turntable.gif", "views.png", "result.json",
                 "checkpoint.safetensors", "coarse/checkpoint.safetensors"):
        assert (out / name).stat().st_size > 0, name
    obj = (out / "mesh.obj").read_text()
    assert "mtllib mesh.mtl" in obj and "\nvt " in obj and "map_Kd mesh.png" in (out / "mesh.mtl").read_text()
    scene = trimesh.load(str(out / "mesh.glb"))
    mesh = scene if isinstance(scene, trimesh.Trimesh) else next(iter(scene.geometry.values()))
    assert mesh.visual.kind == "texture" and mesh.visual.uv.shape == (len(mesh.vertices), 2)
    image = mesh.visual.material.baseColorTexture if hasattr(mesh.visual.material, "baseColorTexture") else \
        mesh.visual.material.image
    assert image is not None and image.size == (32, 32)
    assert json.loads((out / "result.json").read_text())["config"]["tet_resolution"] == 10


def test_resume_continues_the_fine_stage(tmp_path, prior_file):
    M.run(tiny_cfg(tmp_path, prior_file, turntable_frames=0, mesh_formats=[]))
    res = M.run(tiny_cfg(tmp_path, prior_file, turntable_frames=0, mesh_formats=[], fine_iterations=5))
    assert res["fine_start"] == 3 and res["fine_iterations"] == 5


def test_a_fine_step_moves_the_geometry_and_the_texture(tmp_path, prior_file):
    res = M.run_one(tiny_cfg(tmp_path, prior_file, fine_iterations=0, turntable_frames=0, mesh_formats=[]))
    fine = res["fine"]
    sdf, deform = fine.sdf.detach().clone(), fine.deform.detach().clone()
    tex = [p.detach().clone() for p in fine.field.albedo_net.parameters()]
    fine.cfg = M.Magic3DConfig(**{**fine.cfg.__dict__, "fine_iterations": 1})
    fine.train_step()
    assert not torch.equal(fine.sdf, sdf) and not torch.equal(fine.deform, deform)
    assert any(not torch.equal(a, b) for a, b in zip(fine.field.albedo_net.parameters(), tex))
    # stage 3: the geometry stays, the texture moves
    sdf, deform = fine.sdf.detach().clone(), fine.deform.detach().clone()
    fine.train_step()  # step 1 >= fine_iterations: texture only
    assert torch.equal(fine.sdf, sdf) and torch.equal(fine.deform, deform)
    # the texture field starts as a copy of the coarse field: the coarse run is untouched
    assert not any(p is q for p, q in zip(fine.field.parameters(), res["coarse"].field.parameters()))


def test_the_initial_surface_is_the_coarse_density_level(tmp_path, prior_file):
    res = M.run_one(tiny_cfg(tmp_path, prior_file, fine_iterations=0, turntable_frames=0, mesh_formats=[]))
    fine = res["fine"]
    verts, faces = fine.final_mesh()
    dens = res["coarse"].field.density(verts)
    # marching tets interpolates linearly between grid vertices: the surface lies near density == threshold
    assert faces.shape[0] > 0 and (dens - 5.0).abs().median() < 2.5, (float(dens.min()), float(dens.max()))


def test_the_automatic_level_best_matches_the_coarse_silhouettes(tmp_path, prior_file):
    from pyengine.render.tets import marching_tets, sdf_from_density

    res = M.run_one(tiny_cfg(tmp_path, prior_file, density_threshold=0.0, fine_iterations=0, turntable_frames=0,
                             mesh_formats=[]))
    fine, coarse = res["fine"], res["coarse"]
    assert fine.threshold in M.FineStage.LEVELS and res["density_threshold"] == fine.threshold
    cams = coarse.eval_cameras(n=4, size=2 * coarse.size)
    target = coarse.render_views(cams)["opacity"] > 0.5
    density = -sdf_from_density(fine.grid_verts, coarse.field.density, 0.0)

    def iou(level):
        verts, faces = marching_tets(fine.grid_verts, fine.tets, level - density)
        if faces.shape[0] == 0:
            return -1.0
        mask = fine.render(cams, "albedo", None, mesh=(verts, faces))["opacity"] > 0.5
        return float(((mask & target).sum((1, 2)) / (mask | target).sum((1, 2)).clamp_min(1)).mean())

    scores = {lv: iou(lv) for lv in M.FineStage.LEVELS if lv < float(density.max())}
    assert len(scores) >= 2 and scores[fine.threshold] == max(scores.values()), scores
    # the initial surface is that level's
    verts, faces = fine.final_mesh()
    assert (coarse.field.density(verts) - fine.threshold).abs().median() < 0.5 * fine.threshold


def test_baked_texture_holds_the_field_colours_at_the_uvs():
    import trimesh

    box = trimesh.creation.icosphere(subdivisions=2, radius=0.8)
    verts, faces = torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces)
    field = lambda x: (x / 1.6 + 0.5).clamp(0, 1)  # noqa: E731
    baked = M.bake_texture(verts, faces, field, 128)
    img = baked["image"].astype(np.float32) / 255
    uv = baked["uv"].numpy()
    # OBJ/GLB convention: v = 0 is the bottom row of the image
    cols = np.clip((uv[:, 0] * 128).astype(int), 0, 127)
    rows = np.clip(((1 - uv[:, 1]) * 128).astype(int), 0, 127)
    got = img[rows, cols]
    want = field(baked["verts"]).numpy()
    assert np.abs(got - want).mean() < 0.03, np.abs(got - want).mean()
    assert baked["faces"].shape == faces.shape


@pytest.mark.parametrize("kw, match", [
    ({"tet_resolution": 0}, "tet_resolution"), ({"fine_t_max": 0.0}, "fine_t_max"),
    ({"deform_scale": 0.9}, "deform_scale"), ({"coarse": {"bogus": 1}}, "unknown SDSConfig"),
    ({"coarse": {"iterations": 5}}, "magic3d's own fields"), ({"mesh_formats": ["ply"]}, "mesh_formats"),
    ({"lambda_normal": -1.0}, "lambda_normal"), ({"method": "dreamfield"}, "method"),
    ({"density_threshold": -1.0}, "density_threshold")])
def test_bad_configs_name_the_setting(kw, match):
    with pytest.raises(ValueError, match=match):
        M.check_config(M.Magic3DConfig(**kw))


def test_cli_runs_and_eval_tables_both_stages(tmp_path, prior_file, capsys):
    clf = ip.ImageClassifier(4)
    path = str(tmp_path / "clf.safetensors")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, path,
              metadata={"settings": json.dumps({"classifier_width": 4, "size": 16}),
                        "heldout": json.dumps({"joint": 0.0})})
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    cfg = tiny_cfg(tmp_path, prior_file, turntable_frames=0, mesh_formats=[], classifier=path,
                   out=str(tmp_path / "eval"))
    res = M.run(cfg, "eval", str(prompts))
    row = res["rows"][0]
    assert row["fine_size"] == 4 * row["coarse_size"] and 0 <= row["fine_iou"] <= 1 and 0 <= row["fine_r"] <= 1
    assert "fine R-prec" in res["table"] and os.path.exists(tmp_path / "eval" / "summary.md")
    assert main(["magic3d", "a red cube", f"prior={prior_file}", "tet_resolution=0"]) == 1
    assert "tet_resolution" in capsys.readouterr().err
