"""`fine-tune-dag annotate`: the pages where a person picks the better answer or tells the author apart."""
