import logging
import warnings
from types import SimpleNamespace

from tuneship.logs import library_output, show_messages


def test_library_warnings_go_to_the_log_file_and_everything_is_restored(tmp_path, capfd):
    import datasets
    from transformers.utils import logging as hf_logging

    transformers_handlers = logging.getLogger("transformers").handlers[:]
    log_file = tmp_path / "train.log"
    with library_output(log_file):
        warnings.warn("a library FutureWarning", FutureWarning, stacklevel=1)
        logging.getLogger("transformers.trainer").warning("a transformers warning")
        logging.getLogger("trl").warning("a trl warning")
        logging.getLogger("tuneship.train.sft").warning("our own message")
        assert not hf_logging.is_progress_bar_enabled() and not datasets.is_progress_bar_enabled()
    text = log_file.read_text()
    for line in ("a library FutureWarning", "a transformers warning", "a trl warning", "our own message"):
        assert line in text
    console = capfd.readouterr()
    assert "library" not in console.err + console.out and "trl warning" not in console.err
    assert hf_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()
    assert logging.getLogger("transformers").handlers == transformers_handlers


def test_the_cli_shows_our_messages_on_stderr(capsys):
    show_messages()
    show_messages()  # idempotent: one handler
    logging.getLogger("tuneship.train.sft").info("Data: x.jsonl")
    logging.getLogger("tuneship.export.merge").warning("careful")
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["Data: x.jsonl", "WARNING: careful"] and captured.out == ""


def test_progress_shows_step_loss_and_rate(capsys):
    from tuneship.train.progress import RichProgress

    progress = RichProgress()
    state = SimpleNamespace(is_world_process_zero=True, max_steps=10, global_step=0)
    progress.on_train_begin(None, state, None)
    for step in range(1, 11):
        state.global_step = step
        progress.on_step_end(None, state, None)
    progress.on_log(None, state, None, logs={"loss": 1.2345, "tokens_per_second": 812.0})
    progress.on_log(None, state, None, logs={"eval_loss": 0.9})
    progress.on_train_end(None, state, None)
    progress.close()  # twice is harmless
    err = capsys.readouterr().err
    assert "10/10" in err and "loss 1.234" in err and "812 tokens/s" in err and "held-out 0.900" in err


def test_only_the_first_process_shows_progress(capsys):
    from tuneship.train.progress import RichProgress

    progress = RichProgress()
    state = SimpleNamespace(is_world_process_zero=False, max_steps=10, global_step=0)
    progress.on_train_begin(None, state, None)
    progress.on_step_end(None, state, None)
    progress.on_train_end(None, state, None)
    assert progress.progress is None and capsys.readouterr().err == ""


def test_without_a_terminal_each_log_event_prints_a_line_with_time_left(capsys):
    from tuneship.train.progress import RichProgress

    progress = RichProgress()
    state = SimpleNamespace(is_world_process_zero=True, max_steps=4, global_step=0)
    progress.on_train_begin(None, state, None)  # capsys: stderr is no terminal
    for step in (1, 2):
        state.global_step = step
        progress.on_step_end(None, state, None)
        progress.on_log(None, state, None, logs={"loss": 2.0 / step, "tokens_per_second": 100.0})
    progress.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("training ")]
    assert lines[0].startswith("training 1/4 (25%), loss 2.000, 100 tokens/s, ")
    assert lines[1].startswith("training 2/4 (50%), loss 1.000, 100 tokens/s, ") and "eta " in lines[1]
