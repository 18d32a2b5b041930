"""Peak RSS of TFDS's own Beam path on the DirectRunner, for N records of 7 KB: the reason
`omni data build` writes its shards itself (docs/data.md, "Your data at scale").

A GeneratorBasedBuilder whose _generate_examples returns a PTransform, as TFDS documents it;
TFDS's BeamWriter then groups every serialized record by output shard (GroupByKey), which the
DirectRunner holds in memory:

    /usr/bin/time -f %M python benchmarks/tfds_beam_memory.py 10000 /tmp/tfds-probe-10k
    /usr/bin/time -f %M python benchmarks/tfds_beam_memory.py 40000 /tmp/tfds-probe-40k
"""
import sys

import apache_beam as beam
import numpy as np
import tensorflow_datasets as tfds

N, OUT = int(sys.argv[1]), sys.argv[2]


def make(i):
    return str(i), {"image": np.random.default_rng(i).bytes(7000), "text": f"caption {i}"}


class BeamProbe(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"image": tfds.features.Tensor(shape=(), dtype=np.object_), "text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        return beam.Create(range(N)) | beam.Map(make)


config = tfds.download.DownloadConfig(beam_runner=beam.runners.DirectRunner(),
                                      beam_options=beam.options.pipeline_options.PipelineOptions(
                                          ["--direct_num_workers=1", "--direct_running_mode=in_memory"]))
BeamProbe(data_dir=OUT, file_format="array_record").download_and_prepare(download_config=config)
print("built", N)
