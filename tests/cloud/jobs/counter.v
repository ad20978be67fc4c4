// A small design for the synth job kind's test: an 8-bit counter with
// enable and synchronous reset.
module counter (
    input  wire       clk,
    input  wire       reset,
    input  wire       enable,
    output reg  [7:0] count
);
    always @(posedge clk) begin
        if (reset)
            count <= 8'd0;
        else if (enable)
            count <= count + 8'd1;
    end
endmodule
