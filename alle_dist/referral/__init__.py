"""Referral: when an image goes to a haematologist instead of getting a label (`signals`: the vocabulary
table and the unfamiliar-image rule's thresholds; `bounds`: their finite-sample guarantees)."""
