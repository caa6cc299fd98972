"""`dreambooth-sweep` helper commands."""

from __future__ import annotations

from pathlib import Path

from dreambooth_sweep.cli import main


def test_make_tiny_model_writes_a_loadable_pipeline(tmp_path: Path, capsys) -> None:
    from diffusers import StableDiffusionPipeline

    assert main(["make-tiny-model", str(tmp_path / "tiny")]) == 0
    assert "from_pretrained" in capsys.readouterr().out
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "tiny")
    assert pipe.unet.config.cross_attention_dim == 32
    assert main(["make-tiny-model", str(tmp_path / "tiny")]) == 2  # never overwrites


def test_make_demo_data(tmp_path: Path, capsys) -> None:
    assert main(["make-demo-data", str(tmp_path / "toy"), "--num-images", "5"]) == 0
    assert len(list((tmp_path / "toy").glob("*.jpg"))) == 5
    assert main(["make-demo-data", str(tmp_path / "bad"), "--num-images", "2"]) == 2
    assert "between 5 and 25" in capsys.readouterr().err


def test_wait_for_url_answers_and_times_out(capsys) -> None:
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert main(["wait-for-url", f"http://127.0.0.1:{server.server_port}/", "--timeout", "5"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert main(["wait-for-url", f"http://127.0.0.1:{server.server_port}/", "--timeout", "1"]) == 1
    assert "did not answer" in capsys.readouterr().err
