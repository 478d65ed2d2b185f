"""The measures of a poem: words and their sounds (CMU), lines and stanzas, rhyme, meter, named forms.

A leaf package (it imports nothing from quill), so every layer measures verse with the same code: data
synthesis describes a poem truthfully with it, the decoding engine checks a line's rhyme and meter with
it, and the evaluation scores samples and human poems with it.
"""
