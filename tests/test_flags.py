from absl import flags as absl_flags

from kerasbn import flags as train_flags

FLAGS = absl_flags.FLAGS


def _parse(argv):
    FLAGS.unparse_flags()
    train_flags.parse_argv(argv)


def test_a_repeatable_flag_on_the_command_line_replaces_the_flagfiles(tmp_path):
    base = tmp_path / "base.flags"
    base.write_text("--stepvalue=600\n--stepvalue=700\n--target_accuracy=0.8\n--max_iter=800\n")
    outer = tmp_path / "outer.flags"
    outer.write_text(f"--flagfile={base}\n--jump_at=750\n")
    _parse(["train", f"--flagfile={outer}", "--stepvalue=400", "--max_iter=900"])
    assert FLAGS.stepvalue == [400]
    assert FLAGS.target_accuracy == [0.8] and FLAGS.jump_at == [750]
    assert FLAGS.max_iter == 900
    _parse(["train", "--flagfile", str(outer), "--target_accuracy=0.5",
            "--target_accuracy=0.9"])
    assert FLAGS.target_accuracy == [0.5, 0.9] and FLAGS.stepvalue == [600, 700]
    _parse(["train", f"--flagfile={outer}"])
    assert FLAGS.stepvalue == [600, 700]
    FLAGS.unparse_flags()
