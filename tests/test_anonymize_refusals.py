"""Requests the anonymize job refuses before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.anonymize_jobs import AnonymizeError, normalise_params
from appliance.config import AnonProfileConfig, ConfigStore


@pytest.fixture
def config(tmp_path: Path):
    store = ConfigStore(tmp_path / "data")
    yield store
    store.close()


def test_a_profile_that_retains_uids_cannot_copy_archived_studies(config: ConfigStore) -> None:
    config.add_anon_profile(AnonProfileConfig(name="keepuids", options=["retain_uids"]))
    with pytest.raises(AnonymizeError, match="retains UIDs.*--input"):
        normalise_params({"study_uids": ["1.2.3"], "profile": "keepuids"}, config)
    config.add_anon_profile(AnonProfileConfig(name="research", options=["clean_descriptors"]))
    clean = normalise_params({"study_uids": ["1.2.3"], "profile": "research"}, config)
    assert clean == {"study_uids": ["1.2.3"], "profile": "research"}
