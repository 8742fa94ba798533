"""The quantizer palette: candidates, packing, RTN, GPTQ and quantized modules."""
