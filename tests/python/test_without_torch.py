"""flashsdpa installed without PyTorch: the C ABI module works, and the
PyTorch-facing names raise an ImportError that says what to install."""
import subprocess
import sys
import textwrap


def test_import_without_torch():
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
        import flashsdpa
        assert "cpu" in flashsdpa.backends(), flashsdpa.backends()
        assert "enable" not in flashsdpa.__all__
        for name in ("enable", "scaled_dot_product_attention", "flash_attn_func"):
            try:
                getattr(flashsdpa, name)
            except ImportError as e:
                assert "flashsdpa[torch]" in str(e), e
            else:
                raise AssertionError(name + " did not raise")
        try:
            flashsdpa.no_such_name
        except AttributeError:
            pass
        else:
            raise AssertionError("unknown name did not raise AttributeError")
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
