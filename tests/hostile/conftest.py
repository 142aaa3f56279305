"""The trainer tests' S3 fixtures (moto over real HTTP), for the canary test's trainer half."""

from tests.trainer.conftest import moto_server, s3

__all__ = ["moto_server", "s3"]
